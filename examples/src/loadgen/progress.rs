//! The progress bar shown while a scenario runs (on stderr, only when it is a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps with a label, or a hidden one when `show` is false (tests).
pub fn bar(show: bool, len: u64, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(label.to_owned());
    pb
}
