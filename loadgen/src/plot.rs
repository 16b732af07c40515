//! `loadgen plot`: latency by percentile, several runs overlaid, as an SVG, in the layout of
//! HdrHistogram's plotter (x: percentile on a log scale of 1/(1-p), so 90%, 99%, 99.9% ... are
//! evenly spaced).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

use crate::hgrm;
use crate::report::RunReport;

/// One curve: label and (quantile 0..=1, latency in microseconds) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Reads `PATH` or `PATH=LABEL`: a loadgen JSON result or an `.hgrm` file in milliseconds
/// (what loadgen and wrk2 write).
pub fn load(input: &str) -> Result<Curve> {
    let (path, label) = match input.rsplit_once('=') {
        Some((p, l)) if !l.is_empty() && !p.is_empty() => (PathBuf::from(p), Some(l.to_string())),
        _ => (PathBuf::from(input), None),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let stem = || {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| input.to_string())
    };
    if text.trim_start().starts_with('{') {
        let report: RunReport = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a loadgen run result (JSON with schema {}); a capacity search \
                 writes its confirmation run to PREFIX.confirm.json",
                path.display(),
                crate::report::SCHEMA
            )
        })?;
        let points = report
            .distribution
            .iter()
            .map(|d| (d.percentile / 100.0, d.value_us))
            .collect();
        let label = label.unwrap_or(if report.label.is_empty() {
            stem()
        } else {
            report.label
        });
        Ok(Curve { label, points })
    } else {
        let points = hgrm::parse(&text)
            .with_context(|| {
                format!(
                    "{} is neither a loadgen JSON result nor .hgrm",
                    path.display()
                )
            })?
            .iter()
            .map(|p| (p.quantile, p.value * 1e3))
            .collect();
        Ok(Curve {
            label: label.unwrap_or_else(stem),
            points,
        })
    }
}

/// x coordinate of a quantile: 1/(1-q), with q = 1 drawn at `right_edge`.
fn x_of(q: f64, right_edge: f64) -> f64 {
    if q >= 1.0 {
        right_edge
    } else {
        (1.0 / (1.0 - q)).min(right_edge)
    }
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{p:.5}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn latency_label(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        let text = format!("{us:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws the curves into an SVG file.
pub fn draw(curves: &[Curve], title: &str, output: &Path, log_y: bool) -> Result<()> {
    if curves.iter().all(|c| c.points.is_empty()) {
        bail!("nothing to plot: the inputs hold no latency points (did the runs get replies?)");
    }
    // Right edge: one decade past the highest finite percentile tick, at least 99.9%.
    let highest_finite = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, _)| 1.0 / (1.0 - q))
        .fold(1000.0f64, f64::max);
    let right_edge = 10f64.powf(highest_finite.log10().ceil()).min(1e7);
    let max_us = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let min_us = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(max_us, f64::min);

    let root = SVGBackend::new(output, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .margin_right(50)
        .x_label_area_size(50)
        .y_label_area_size(80);
    let x_range = (1f64..right_edge).log_scale();
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    macro_rules! draw_series {
        ($chart:expr) => {{
            let chart = &mut $chart;
            chart
                .configure_mesh()
                .x_desc("Percentile")
                .y_desc("Latency (microseconds)")
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| latency_label(*y))
                .draw()
                .map_err(plot_error)?;
            for (i, curve) in curves.iter().enumerate() {
                let color = colors[i % colors.len()];
                let points = curve
                    .points
                    .iter()
                    .map(|&(q, v)| (x_of(q, right_edge), v.max(min_us.min(1e-3))));
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(curve.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(plot_error)?;
        }};
    }
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(
                x_range,
                ((min_us * 0.8).max(1e-3)..max_us * 1.25).log_scale(),
            )
            .map_err(plot_error)?;
        draw_series!(chart);
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, 0f64..max_us * 1.05)
            .map_err(plot_error)?;
        draw_series!(chart);
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert!((x_of(0.99, 1e6) - 100.0).abs() < 1e-6);
        assert_eq!(x_of(1.0, 1e6), 1e6);
    }

    #[test]
    fn draws_an_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hgrm_path = dir.join("redis.hgrm");
        let mut h = crate::worker::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 100).unwrap();
        }
        std::fs::write(&hgrm_path, hgrm::distribution_text(&h, 1e6)).unwrap();
        let curves = vec![
            load(hgrm_path.to_str().unwrap()).unwrap(),
            Curve {
                label: "seqd".into(),
                points: vec![(0.0, 10.0), (0.5, 20.0), (0.99, 40.0), (1.0, 80.0)],
            },
        ];
        assert_eq!(curves[0].label, "redis");
        let out = dir.join("plot.svg");
        draw(&curves, "seqd vs Redis", &out, false).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in ["seqd vs Redis", "redis", "seqd", "99%", "Percentile"] {
            assert!(svg.contains(text), "{text} missing");
        }
        draw(&curves, "log", &dir.join("log.svg"), true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
