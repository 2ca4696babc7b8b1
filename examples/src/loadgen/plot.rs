//! The percentile plot: latency (ms) against percentile on a "nines" axis (p0, p90, p99,
//! p99.9, p99.99, p99.999), one line per histogram, drawn as a PNG with plotters and an
//! embedded DejaVu Sans font (no system font libraries needed).

use super::stats::Latency;
use anyhow::Context as _;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// The font family name the plot asks for.
const FONT: &str = "sans-serif";

static REGISTER_FONT: Once = Once::new();

fn register_font() {
    REGISTER_FONT.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            tracing::warn!("the embedded font was rejected; the plot will have no text");
        }
    });
}

/// Highest point of the x axis: 5 nines, p99.999.
const MAX_NINES: f64 = 5.0;

/// Draws `series` (label, histogram) into a `width`×`height` PNG at `path`.
pub fn percentile_plot(
    path: &Path,
    title: &str,
    series: &[(&str, &Latency)],
) -> anyhow::Result<()> {
    register_font();
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| h.count() > 0)
        .map(|(name, h)| (*name, curve(h)))
        .collect();
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;

    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..MAX_NINES, 0.0..y_max)
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .context("drawing the plot")?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .context("drawing the plot")?
            .label(name.to_owned())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("drawing the plot")?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Points (nines, ms) of a histogram, dense enough for a smooth line.
fn curve(h: &Latency) -> Vec<(f64, f64)> {
    (0..=500)
        .map(|i| {
            let nines = MAX_NINES * f64::from(i) / 500.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.quantile_micros(q) as f64 / 1000.0)
        })
        .collect()
}

/// `0 → p0`, `1 → p90`, `2 → p99`, `3 → p99.9`, …
fn nines_label(x: f64) -> String {
    let n = x.round() as i32;
    if (x - f64::from(n)).abs() > 0.01 {
        return String::new();
    }
    match n {
        0 => "p0".into(),
        1 => "p90".into(),
        n => format!(
            "p99{}",
            if n > 2 {
                format!(".{}", "9".repeat((n - 2) as usize))
            } else {
                String::new()
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(nines_label(0.0), "p0");
        assert_eq!(nines_label(1.0), "p90");
        assert_eq!(nines_label(2.0), "p99");
        assert_eq!(nines_label(3.0), "p99.9");
        assert_eq!(nines_label(5.0), "p99.999");
        assert_eq!(nines_label(1.5), "");
    }

    #[test]
    fn draws_a_png() {
        let mut h = Latency::new();
        for i in 1..10_000u64 {
            h.record_micros(i * 3 % 20_000 + 100);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        percentile_plot(
            &path,
            "test plot",
            &[("one", &h), ("empty", &Latency::new())],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
