//! Latency objectives (`--slo 'p99<=1ms'`) and durations with units (`500us`, `1.5ms`).

use std::fmt;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

/// Which point of the latency distribution an objective constrains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    /// A percentile, 0 < p <= 100.
    Percentile(f64),
    Max,
}

/// One bound, e.g. `p99 <= 1ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub point: Point,
    /// The bound in nanoseconds.
    pub limit_ns: u64,
    /// `<=` (true) or `<` (false).
    pub inclusive: bool,
}

/// A set of objectives that must all hold, e.g. `p99<=1ms,p99.9<=5ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub objectives: Vec<Objective>,
}

/// How one objective fared in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub objective: Objective,
    pub measured_ns: u64,
    pub met: bool,
}

const SLO_HELP: &str = "write objectives as pNN<=DURATION or max<=DURATION, comma-separated, \
e.g. 'p99<=1ms' or 'p99<=500us,p99.9<=2ms'";

impl Slo {
    pub fn parse(text: &str) -> Result<Slo> {
        let mut objectives = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            objectives.push(
                Objective::parse(part)
                    .with_context(|| format!("bad objective {part:?} in --slo: {SLO_HELP}"))?,
            );
        }
        if objectives.is_empty() {
            bail!("--slo is empty: {SLO_HELP}");
        }
        Ok(Slo { objectives })
    }

    /// Checks every objective against a latency histogram recorded in nanoseconds.
    pub fn check(&self, latency: &Histogram<u64>) -> Vec<Verdict> {
        self.objectives
            .iter()
            .map(|o| {
                let measured_ns = match o.point {
                    Point::Max => latency.max(),
                    Point::Percentile(p) => latency.value_at_quantile(p / 100.0),
                };
                let met = if o.inclusive {
                    measured_ns <= o.limit_ns
                } else {
                    measured_ns < o.limit_ns
                };
                Verdict {
                    objective: *o,
                    measured_ns,
                    met,
                }
            })
            .collect()
    }
}

impl Objective {
    fn parse(text: &str) -> Result<Objective> {
        let (left, inclusive, right) = if let Some((l, r)) = text.split_once("<=") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once('<') {
            (l, false, r)
        } else {
            bail!("no '<=' or '<'");
        };
        let left = left.trim().to_ascii_lowercase();
        let point = if left == "max" || left == "p100" {
            Point::Max
        } else if let Some(p) = left.strip_prefix('p') {
            let p: f64 = p
                .parse()
                .with_context(|| format!("{left:?} is not a percentile such as p99 or p99.9"))?;
            if !(p > 0.0 && p < 100.0) {
                bail!("percentile {p} is not between 0 and 100");
            }
            Point::Percentile(p)
        } else {
            bail!("{left:?} is neither a percentile (p99, p99.9) nor max");
        };
        Ok(Objective {
            point,
            limit_ns: parse_latency(right.trim())?,
            inclusive,
        })
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Max => write!(f, "max"),
            Point::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.inclusive { "<=" } else { "<" };
        write!(f, "{}{op}{}", self.point, format_ns(self.limit_ns))
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.objectives.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{o}")?;
        }
        Ok(())
    }
}

/// Parses a duration with a unit: `ns`, `us` (or `µs`), `ms`, `s`, `m`; fractions allowed
/// (`1.5ms`). Returns nanoseconds.
pub fn parse_latency(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "" => bail!("{text:?} has no unit: write e.g. 500us, 1ms or 2s"),
        other => bail!("unknown unit {other:?} in {text:?}: use ns, us, ms, s or m"),
    };
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} does not start with a number"))?;
    let ns = value * scale;
    if !ns.is_finite() || ns < 0.0 || ns > u64::MAX as f64 {
        bail!("{text:?} is out of range");
    }
    Ok(ns.round() as u64)
}

/// Parses a command-line duration such as `10s`, `500ms` or `2m` (for clap).
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    Ok(std::time::Duration::from_nanos(parse_latency(text)?))
}

/// A latency for people: `850ns`, `12.3us`, `1.25ms`, `2.000s`.
pub fn format_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}us", trim(v / 1e3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", trim(v / 1e6))
    } else {
        format!("{}s", trim(v / 1e9))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let slo = Slo::parse("p99<=1ms").unwrap();
        assert_eq!(
            slo.objectives,
            vec![Objective {
                point: Point::Percentile(99.0),
                limit_ns: 1_000_000,
                inclusive: true
            }]
        );
        let slo = Slo::parse(" p99.9 < 500us , max<=2s,P50<=10µs").unwrap();
        assert_eq!(slo.objectives.len(), 3);
        assert_eq!(slo.objectives[0].point, Point::Percentile(99.9));
        assert_eq!(slo.objectives[0].limit_ns, 500_000);
        assert!(!slo.objectives[0].inclusive);
        assert_eq!(slo.objectives[1].point, Point::Max);
        assert_eq!(slo.objectives[1].limit_ns, 2_000_000_000);
        assert_eq!(slo.objectives[2].limit_ns, 10_000);
        assert_eq!(slo.to_string(), "p99.9<500us,max<=2s,p50<=10us");
    }

    #[test]
    fn refuses_what_it_cannot_read_and_says_how_to_write_it() {
        for bad in [
            "",
            "p99",
            "p99<=1",
            "p99<=1h",
            "q99<=1ms",
            "p100.5<=1ms",
            "p0<=1ms",
            "p99<=ms",
            "p99>=1ms",
        ] {
            let err = Slo::parse(bad).unwrap_err();
            assert!(format!("{err:#}").contains("--slo"), "{bad}: {err:#}");
        }
    }

    #[test]
    fn latencies_with_units() {
        assert_eq!(parse_latency("250ns").unwrap(), 250);
        assert_eq!(parse_latency("1.5ms").unwrap(), 1_500_000);
        assert_eq!(parse_latency("2s").unwrap(), 2_000_000_000);
        assert_eq!(parse_latency("1m").unwrap(), 60_000_000_000);
        assert!(parse_latency("10").is_err());
        assert!(parse_latency("x1s").is_err());
        assert_eq!(format_ns(850), "850ns");
        assert_eq!(format_ns(12_300), "12.3us");
        assert_eq!(format_ns(1_000_000), "1ms");
    }

    #[test]
    fn checks_a_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for v in 1..=100u64 {
            h.record(v * 10_000).unwrap(); // 10us .. 1ms
        }
        let slo = Slo::parse("p99<=1ms,p50<500us").unwrap();
        let verdicts = slo.check(&h);
        assert!(verdicts[0].met);
        assert!(!verdicts[1].met, "{verdicts:?}"); // p50 is 500us, not below it
        assert!(!Slo::parse("max<=900us").unwrap().check(&h)[0].met);
    }
}
