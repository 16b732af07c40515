//! The HdrHistogram percentile-distribution text format (`.hgrm`), as written by the Java
//! reference implementation's `AbstractHistogram.outputPercentileDistribution` and read by
//! HdrHistogram's plotter: a header, one line per percentile tick, and three footer lines.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!      100.000 0.000000000000          1           1.00
//!      ...
//!      600.000 1.000000000000          4
//! #[Mean    =      287.500, StdDeviation   =      188.331]
//! #[Max     =      600.000, Total count    =            4]
//! #[Buckets =           32, SubBuckets     =         2048]
//! ```
//! Numbers are rounded the way C's printf rounds them (as HdrHistogram_c and wrk2 do); the
//! Java version rounds an exact tie upwards, which can change the last printed digit of a
//! value that ends exactly in 5 one place past the printed precision.

use std::io::{self, Write};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

/// Ticks per half distance to 100%, as wrk2 and the Java examples use.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes the percentile distribution of `h`, dividing every value by `scale` (e.g. 1000.0 to
/// print microseconds from nanoseconds).
pub fn write_distribution(
    out: &mut impl Write,
    h: &Histogram<u64>,
    ticks_per_half_distance: u32,
    scale: f64,
) -> io::Result<()> {
    let digits = usize::from(h.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for point in distribution(h, ticks_per_half_distance) {
        let value = point.value as f64 / scale;
        if point.quantile < 1.0 {
            writeln!(
                out,
                "{value:>12.digits$} {:>2.12} {:>10} {:>14.2}",
                point.quantile,
                point.count,
                1.0 / (1.0 - point.quantile)
            )?;
        } else {
            writeln!(
                out,
                "{value:>12.digits$} {:>2.12} {:>10}",
                point.quantile, point.count
            )?;
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h)
    )
}

/// The distribution as a string (see [`write_distribution`]).
pub fn distribution_text(h: &Histogram<u64>, scale: f64) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_distribution(&mut out, h, TICKS_PER_HALF_DISTANCE, scale);
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of a percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributionPoint {
    /// The highest value equivalent to the one iterated to, unscaled.
    pub value: u64,
    /// 0.0 ..= 1.0
    pub quantile: f64,
    /// Values recorded at or below `value`.
    pub count: u64,
}

/// The percentile ticks of `h` (the lines of an `.hgrm` file), stepping exactly as Java's
/// `PercentileIterator` does: levels are accumulated in percent (0..100), which decides ties
/// such as "is 75% reached?" the same way the reference output does. (The crate's own
/// `iter_quantiles` accumulates fractions of 1 and misses such ties by one ulp.)
pub fn distribution(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<DistributionPoint> {
    let total = h.len();
    let mut points = Vec::new();
    let mut level = 0.0f64;
    let mut cumulative = 0u64;
    let mut last_value = 0;
    for v in h.iter_recorded() {
        cumulative += v.count_at_value();
        last_value = h.highest_equivalent(v.value_iterated_to());
        while 100.0 * cumulative as f64 / total as f64 >= level {
            points.push(DistributionPoint {
                value: last_value,
                quantile: level / 100.0,
                count: cumulative,
            });
            let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i32 + 1;
            let ticks = f64::from(ticks_per_half_distance) * 2f64.powi(halvings);
            level += 100.0 / ticks;
            if cumulative >= total {
                break;
            }
        }
        if cumulative >= total {
            break;
        }
    }
    if total > 0 {
        // One last step to 100%, at the highest recorded value.
        points.push(DistributionPoint {
            value: last_value,
            quantile: 1.0,
            count: total,
        });
    }
    points
}

/// The histogram's sub-bucket count, which the crate does not expose: its counts array holds
/// `(buckets + 1) * sub_buckets / 2` entries.
fn sub_bucket_count(h: &Histogram<u64>) -> usize {
    2 * h.distinct_values() / (usize::from(h.buckets()) + 1)
}

/// A point read back from an `.hgrm` file: the value (in the file's unit) and its quantile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParsedPoint {
    pub value: f64,
    pub quantile: f64,
}

/// Reads the percentile lines of an `.hgrm` file (ours, wrk2's `--latency` spectrum, Java's).
pub fn parse(text: &str) -> Result<Vec<ParsedPoint>> {
    let mut points = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let (Some(value), Some(quantile)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(value), Ok(quantile)) = (value.parse::<f64>(), quantile.parse::<f64>()) else {
            continue; // header, footer and comment lines
        };
        if !(0.0..=1.0).contains(&quantile) {
            bail!(
                "line {}: percentile {quantile} is not between 0 and 1",
                number + 1
            );
        }
        points.push(ParsedPoint { value, quantile });
    }
    if points.is_empty() {
        bail!("no percentile lines found (is this an .hgrm percentile distribution?)");
    }
    Ok(points)
}

/// Reads an `.hgrm` file.
pub fn parse_file(path: &std::path::Path) -> Result<Vec<ParsedPoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not an .hgrm file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference output of HdrHistogram's `outputPercentileDistribution(out, 5, 1.0)` for a
    /// histogram (1, 3600000000000, 3) holding 100, 200, 250 and 600, as the Java
    /// implementation's ports assert it.
    const REFERENCE: &str = "       Value     Percentile TotalCount 1/(1-Percentile)

     100.000 0.000000000000          1           1.00
     100.000 0.100000000000          1           1.11
     100.000 0.200000000000          1           1.25
     200.000 0.300000000000          2           1.43
     200.000 0.400000000000          2           1.67
     200.000 0.500000000000          2           2.00
     250.000 0.550000000000          3           2.22
     250.000 0.600000000000          3           2.50
     250.000 0.650000000000          3           2.86
     250.000 0.700000000000          3           3.33
     250.000 0.750000000000          3           4.00
     600.000 0.775000000000          4           4.44
     600.000 1.000000000000          4
#[Mean    =      287.500, StdDeviation   =      188.331]
#[Max     =      600.000, Total count    =            4]
#[Buckets =           32, SubBuckets     =         2048]
";

    fn reference_histogram() -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for v in [100, 200, 250, 600] {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn matches_the_reference_output_exactly() {
        assert_eq!(distribution_text(&reference_histogram(), 1.0), REFERENCE);
    }

    /// Another port's reference (HdrHistogram-go, one tick per half distance): the same ticks,
    /// values and counts.
    #[test]
    fn matches_a_second_reference_with_one_tick() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 30_000_000, 3).unwrap();
        for v in [
            459876, 669187, 711612, 816326, 931423, 1033197, 1131895, 2477317, 3964974, 12718782,
        ] {
            h.record(v).unwrap();
        }
        let got: Vec<(u64, f64, u64)> = distribution(&h, 1)
            .iter()
            .map(|p| (p.value, p.quantile, p.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (460031, 0.0, 1),
                (931839, 0.5, 5),
                (2478079, 0.75, 8),
                (3966975, 0.875, 9),
                (12722175, 0.9375, 10),
                (12722175, 1.0, 10),
            ]
        );
        assert_eq!(h.buckets(), 15);
    }

    #[test]
    fn scaling_divides_values() {
        let text = distribution_text(&reference_histogram(), 1000.0);
        assert!(text.contains("\n       0.100 0.000000000000          1           1.00\n"));
        assert!(text.contains("#[Max     =        0.600, Total count    =            4]"));
    }

    #[test]
    fn an_empty_histogram_still_has_header_and_footer() {
        let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        let text = distribution_text(&h, 1.0);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.ends_with("#[Buckets =           32, SubBuckets     =         2048]\n"));
    }

    #[test]
    fn parses_what_it_writes_and_wrk2_output() {
        let points = parse(REFERENCE).unwrap();
        assert_eq!(points.len(), 13);
        assert_eq!(
            points[12],
            ParsedPoint {
                value: 600.0,
                quantile: 1.0
            }
        );
        let wrk2 = "  Detailed Percentile spectrum:\n       Value   Percentile   TotalCount 1/(1-Percentile)\n\n       9.704     0.000000            1         1.00\n      11.383     1.000000         3992          inf\n#[Mean    =       10.312, StdDev   =        0.301]\n";
        assert_eq!(parse(wrk2).unwrap().len(), 2);
        assert!(parse("nothing here").is_err());
    }
}
