//! Capacity search (`--slo`): the highest open-loop rate that meets a latency objective with
//! no errors and at least 95% of the planned requests answered, found by bisection and then
//! confirmed by a longer run. And the stepped ramp (`--ramp start:end:step:interval`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::report::{CPU_BOUND_PERCENT, Machine, RunReport, group};
use crate::run::{Measured, RunSpec, execute};
use crate::slo::{Slo, format_ns, parse_duration};

/// The share of planned requests that must be answered for a rate to count as kept.
pub const MIN_ACHIEVED: f64 = 0.95;

/// One rate tried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// "closed-loop", "probe", "confirm" or "ramp".
    pub kind: String,
    /// Planned rate (null for the closed-loop run).
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub achieved_ratio: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub client_cpu_percent: f64,
    /// Whether the step met the objective (null when no objective was given).
    pub passed: Option<bool>,
    /// Why it failed, or what it measured against the objective.
    pub reason: String,
}

/// What `--slo` or `--ramp` writes to `PREFIX.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchReport {
    pub schema: String,
    /// "capacity-search" or "ramp".
    pub kind: String,
    pub label: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub slo: Option<String>,
    pub steps: Vec<Step>,
    /// Capacity search: the highest rate that met the objective in the confirmation run.
    pub capacity_rps: Option<f64>,
    /// How the answer was reached, in words.
    pub method: String,
    /// The confirmation run in full (capacity search).
    pub confirmation: Option<RunReport>,
}

/// Judges a run against the objective; returns (passed, reason).
pub fn judge(slo: &Slo, m: &Measured) -> (bool, String) {
    let mut reasons = Vec::new();
    let mut passed = true;
    if m.errors.total() > 0 {
        passed = false;
        reasons.push(format!("{} errors", m.errors.total()));
    }
    if let Some(planned) = m.planned
        && planned > 0
    {
        let ratio = m.completed as f64 / planned as f64;
        if ratio < MIN_ACHIEVED {
            passed = false;
            reasons.push(format!(
                "only {:.1}% of the planned rate achieved",
                ratio * 100.0
            ));
        }
    }
    if m.latency.is_empty() {
        passed = false;
        reasons.push("no replies".into());
    } else {
        for v in slo.check(&m.latency) {
            if !v.met {
                passed = false;
            }
            reasons.push(format!(
                "{}={} ({})",
                v.objective.point,
                format_ns(v.measured_ns),
                if v.met { "ok" } else { "too slow" }
            ));
        }
    }
    (passed, reasons.join(", "))
}

fn step(kind: &str, spec: &RunSpec, m: &Measured, verdict: Option<(bool, String)>) -> Step {
    let q = |quantile: f64| {
        if m.latency.is_empty() {
            0.0
        } else {
            m.latency.value_at_quantile(quantile) as f64 / 1e3
        }
    };
    let (passed, reason) = match verdict {
        Some((p, r)) => (Some(p), r),
        None => (None, String::new()),
    };
    Step {
        kind: kind.into(),
        rate: spec.rate,
        duration_s: m.duration_s,
        throughput_rps: m.throughput_rps().round(),
        achieved_ratio: m
            .planned
            .filter(|&p| p > 0)
            .map(|p| m.completed as f64 / p as f64),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p99_9_us: q(0.999),
        max_us: if m.latency.is_empty() {
            0.0
        } else {
            m.latency.max() as f64 / 1e3
        },
        errors: m.errors.total(),
        client_cpu_percent: m.process_cpu_percent,
        passed,
        reason,
    }
}

/// Prints one row of the table of rates tried.
pub fn print_step(s: &Step) {
    let rate = s.rate.map_or_else(|| "max".to_string(), group);
    let verdict = match s.passed {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "",
    };
    eprintln!(
        "  {:<11} {:>12} {:>12} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>5}  {}",
        s.kind,
        rate,
        group(s.throughput_rps),
        s.achieved_ratio
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0)),
        s.p50_us,
        s.p99_us,
        s.max_us,
        s.errors,
        verdict,
        s.reason
    );
}

pub fn print_header() {
    eprintln!(
        "  {:<11} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>6} {:>5}  why",
        "step", "rate", "achieved", "kept", "p50 us", "p99 us", "max us", "errors", "verdict"
    );
}

/// The outcome of a capacity search: every step, the confirmed rate with its run (if any),
/// and how the answer was reached.
pub struct Capacity {
    pub steps: Vec<Step>,
    pub found: Option<(f64, RunSpec, Measured)>,
    pub method: String,
}

/// Confirmation rates tried, as fractions of the highest rate the probes met, until one holds.
const CONFIRM_BACKOFF: [f64; 5] = [1.0, 0.9, 0.75, 0.5, 0.25];

/// Settings of a capacity search.
pub struct SearchSettings {
    /// Length of each probe.
    pub probe: Duration,
    /// Length of the confirmation run.
    pub confirm: Duration,
    /// Stop bisecting when the bracket is this narrow, relative to its top.
    pub precision: f64,
    pub max_probes: usize,
}

/// Finds the highest rate meeting `slo`. `spec.rate` is ignored; the closed-loop maximum of
/// the same connections and pipeline gives the upper bound.
pub fn capacity(
    spec: &RunSpec,
    slo: &Slo,
    settings: &SearchSettings,
    stop: &Arc<AtomicBool>,
    mut on_step: impl FnMut(&Step),
) -> Result<Capacity> {
    let mut steps = Vec::new();
    let mut closed = spec.clone();
    closed.rate = None;
    closed.requests = None;
    closed.verify = false;
    closed.duration = Some(settings.probe);
    let m = execute(&closed, stop.clone())?;
    let max = m.throughput_rps();
    let s = step("closed-loop", &closed, &m, None);
    on_step(&s);
    steps.push(s);
    if m.errors.total() > 0 || max <= 0.0 {
        bail!(
            "the closed-loop run that bounds the search had {} errors and reached {max:.0} req/s; \
             fix that first (run without --slo to see the errors)",
            m.errors.total()
        );
    }

    // Bisection over [pass, fail): `pass` met the objective (0 = nothing yet), `fail` did not.
    let mut pass = 0.0f64;
    let mut fail = f64::INFINITY;
    let mut rate = max;
    let mut probes = 0;
    // Whether every failing run had a load-generator thread CPU-bound: then the failures may
    // be the tool's latency, not the server's.
    let mut failures_client_bound = true;
    while probes < settings.max_probes && !stop.load(Ordering::Relaxed) {
        let mut probe = spec.clone();
        probe.rate = Some(rate);
        probe.requests = None;
        probe.verify = false;
        probe.duration = Some(settings.probe);
        let m = execute(&probe, stop.clone())?;
        let verdict = judge(slo, &m);
        let ok = verdict.0;
        let s = step("probe", &probe, &m, Some(verdict));
        on_step(&s);
        steps.push(s);
        probes += 1;
        if ok {
            pass = rate;
        } else {
            fail = rate;
            failures_client_bound &= client_bound(&m);
        }
        if fail.is_finite() && (fail - pass) <= settings.precision * fail {
            break;
        }
        if !fail.is_finite() {
            break; // the closed-loop maximum itself passes: nothing higher to try
        }
        rate = (pass + fail) / 2.0;
        if rate < 1.0 {
            break;
        }
    }
    if pass <= 0.0 {
        return Ok(Capacity {
            steps,
            found: None,
            method: format!(
                "no rate tried met {slo} with no errors and >= {:.0}% of the planned rate \
                 (lowest tried: {:.0} req/s){}",
                MIN_ACHIEVED * 100.0,
                fail,
                if failures_client_bound {
                    client_bound_note()
                } else {
                    String::new()
                }
            ),
        });
    }

    // Confirm with a longer run. If it fails, latency is not monotonic in the rate near the
    // bracket (a server's tail can be worse at a moderate rate than at a higher one, where
    // requests travel in larger groups), so back off further each time rather than give up.
    failures_client_bound = true;
    for backoff in CONFIRM_BACKOFF {
        let candidate = pass * backoff;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut confirm = spec.clone();
        confirm.rate = Some(candidate);
        confirm.requests = None;
        confirm.duration = Some(settings.confirm);
        let m = execute(&confirm, stop.clone())?;
        let verdict = judge(slo, &m);
        let ok = verdict.0;
        let s = step("confirm", &confirm, &m, Some(verdict));
        on_step(&s);
        steps.push(s);
        if !ok {
            failures_client_bound &= client_bound(&m);
        }
        if ok {
            let stopped = if !fail.is_finite() {
                "the closed-loop maximum itself passed".to_string()
            } else if (fail - pass) <= settings.precision * fail {
                format!(
                    "stopped when the bracket {pass:.0}..{fail:.0} req/s was within {:.0}%",
                    settings.precision * 100.0
                )
            } else {
                format!(
                    "stopped at --max-probes {} with the bracket {pass:.0}..{fail:.0} req/s",
                    settings.max_probes
                )
            };
            let backed_off = if backoff < 1.0 {
                format!(
                    " ({:.0}% of the rate the probes reached, after longer runs nearer it \
                     failed)",
                    backoff * 100.0
                )
            } else {
                String::new()
            };
            let method = format!(
                "closed-loop maximum {max:.0} req/s as the upper bound; bisection with {probes} \
                 open-loop probes of {} each ({stopped}); confirmed by a {} run at \
                 {candidate:.0} req/s{backed_off} meeting {slo}, with no errors and >= {:.0}% \
                 of the planned rate answered",
                humantime::format_duration(settings.probe),
                humantime::format_duration(settings.confirm),
                MIN_ACHIEVED * 100.0
            );
            return Ok(Capacity {
                steps,
                found: Some((candidate, confirm, m)),
                method,
            });
        }
    }
    Ok(Capacity {
        steps,
        found: None,
        method: format!(
            "probes passed at {pass:.0} req/s but the confirmation runs failed even at {:.0}% \
             of that{}",
            CONFIRM_BACKOFF[CONFIRM_BACKOFF.len() - 1] * 100.0,
            if failures_client_bound {
                client_bound_note()
            } else {
                ": the server's latency is not stable at these rates".to_string()
            }
        ),
    })
}

/// Whether a load-generator thread was CPU-bound during the run.
fn client_bound(m: &Measured) -> bool {
    m.threads
        .iter()
        .any(|t| t.busy_percent >= CPU_BOUND_PERCENT)
}

/// What a search that found nothing adds when every failing run was client-bound.
fn client_bound_note() -> String {
    format!(
        "; in every failing run a load-generator thread was busy >= {:.0}% of the time, so \
         the latency may be the tool's own, not the server's: give it more --threads on \
         free CPUs",
        CPU_BOUND_PERCENT
    )
}

/// A stepped ramp: `start:end:step:interval`, e.g. `10000:100000:10000:2s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub start: f64,
    pub end: f64,
    pub step: f64,
    pub interval: Duration,
}

impl Ramp {
    pub fn parse(text: &str) -> Result<Ramp> {
        let help = "write --ramp START:END:STEP:INTERVAL, e.g. --ramp 10000:100000:10000:2s";
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let [start, end, step, interval] = parts[..] else {
            bail!("--ramp {text:?} needs four fields: {help}");
        };
        let rate = |s: &str, what: &str| -> Result<f64> {
            let v: f64 = s
                .parse()
                .with_context(|| format!("--ramp: {what} {s:?} is not a number: {help}"))?;
            if !(v.is_finite() && v > 0.0) {
                bail!("--ramp: {what} must be a positive rate: {help}");
            }
            Ok(v)
        };
        let ramp = Ramp {
            start: rate(start, "START")?,
            end: rate(end, "END")?,
            step: rate(step, "STEP")?,
            interval: parse_duration(interval)
                .with_context(|| format!("--ramp INTERVAL: {help}"))?,
        };
        if ramp.end < ramp.start {
            bail!("--ramp: END is below START: {help}");
        }
        if (ramp.end - ramp.start) / ramp.step > 1000.0 {
            bail!("--ramp has more than 1000 steps: use a larger STEP");
        }
        if ramp.interval.is_zero() {
            bail!("--ramp: INTERVAL must be longer than 0: {help}");
        }
        Ok(ramp)
    }

    /// The rates of the ramp, `start` to `end` inclusive.
    pub fn rates(&self) -> Vec<f64> {
        let steps = ((self.end - self.start) / self.step + 1e-9).floor() as usize;
        (0..=steps)
            .map(|i| self.start + i as f64 * self.step)
            .collect()
    }
}

/// Runs each rate of the ramp for its interval; one row per step.
pub fn ramp(
    spec: &RunSpec,
    ramp: &Ramp,
    slo: Option<&Slo>,
    stop: &Arc<AtomicBool>,
    mut on_step: impl FnMut(&Step),
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for rate in ramp.rates() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut s = spec.clone();
        s.rate = Some(rate);
        s.requests = None;
        s.duration = Some(ramp.interval);
        let m = execute(&s, stop.clone())?;
        let row = step("ramp", &s, &m, slo.map(|slo| judge(slo, &m)));
        on_step(&row);
        steps.push(row);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_parses_and_lists_rates() {
        let r = Ramp::parse("1000:5000:1000:2s").unwrap();
        assert_eq!(r.interval, Duration::from_secs(2));
        assert_eq!(r.rates(), vec![1000.0, 2000.0, 3000.0, 4000.0, 5000.0]);
        let r = Ramp::parse("10:25:10:500ms").unwrap();
        assert_eq!(r.rates(), vec![10.0, 20.0]);
        assert_eq!(Ramp::parse("0.5:1.5:0.5:1s").unwrap().rates().len(), 3);
        for bad in [
            "", "1:2:3", "a:2:1:1s", "5:1:1:1s", "1:2:0:1s", "1:2:1:1", "1:2:1:0s",
        ] {
            assert!(Ramp::parse(bad).is_err(), "{bad}");
        }
    }
}
