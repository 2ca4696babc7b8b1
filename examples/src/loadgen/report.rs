//! The JSON result file: which scenario, when, with which command, on what machine, and the
//! scenario's own result.

use serde::Serialize;
use std::path::Path;

/// One run's report, as written by `--out`.
#[derive(Debug, Serialize)]
pub struct Report<T: Serialize> {
    /// The scenario's name.
    pub scenario: String,
    /// When the run finished (UTC, RFC 3339).
    pub date: String,
    /// The command line that produced it.
    pub command: String,
    /// Logical CPUs of the machine (the server and the load generator share them when both run
    /// here).
    pub cpus: usize,
    /// The scenario's result.
    pub result: T,
}

impl<T: Serialize> Report<T> {
    /// A report of `result`, dated now, with this process's command line.
    pub fn new(scenario: &str, result: T) -> Report<T> {
        Report {
            scenario: scenario.to_owned(),
            date: utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            result,
        }
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")?;
        Ok(())
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
