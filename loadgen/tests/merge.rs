//! `loadgen merge` and `loadgen run --start-at`: several load-generator processes drive one
//! server together and their interval logs merge into one result.

mod support;

use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use support::{Server, expect_exit, json, loadgen, stderr, temp_dir};

/// Writes an interval log starting at `start_s` (Unix seconds) with one-second intervals, the
/// i-th holding `counts[i]` values of `value_ns`.
fn write_hlog(path: &Path, start_s: u64, counts: &[u64], value_ns: u64) {
    let mut bytes = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .with_start_time(UNIX_EPOCH + Duration::from_secs(start_s))
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut bytes, &mut serializer)
        .expect("log header");
    for (i, &count) in counts.iter().enumerate() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        h.record_n(value_ns, count).expect("record");
        log.write_histogram(
            &h,
            Duration::from_secs(i as u64),
            Duration::from_secs(1),
            None,
        )
        .expect("interval");
    }
    drop(log);
    std::fs::write(path, bytes).expect("write the log");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn merge_sums_histograms_and_rates_over_the_common_window() {
    let dir = temp_dir("merge-exact");
    let (a, b, out) = (dir.join("a.hlog"), dir.join("b.hlog"), dir.join("m"));
    // A measured 1000..1003 s at 100 req/s, all fast; B 1001..1004 s at 10 req/s, all slow.
    write_hlog(&a, 1000, &[100, 100, 100], 1_000);
    write_hlog(&b, 1001, &[10, 10, 10], 5_000_000);
    let result = loadgen(&["merge", path_str(&a), path_str(&b), "-o", path_str(&out)]);
    expect_exit(&result, 0);
    let merged = json(&dir.join("m.json"));
    // Only 1001..1003 counts: two intervals of each.
    assert_eq!(merged["window_from_s"], 1001.0);
    assert_eq!(merged["window_to_s"], 1003.0);
    assert_eq!(merged["requests"], 220);
    assert_eq!(merged["throughput_rps"], 110.0);
    assert_eq!(merged["inputs"][0]["intervals_used"], 2);
    assert_eq!(merged["inputs"][1]["intervals_used"], 2);
    // Percentiles of the summed histogram: 20 of 220 values (9%) are slow, so p99 is slow
    // and p50 fast; an average of the two p99s would be neither.
    let latency = &merged["latency_us"];
    assert_eq!(latency["count"], 220);
    assert!(latency["p50"].as_f64().expect("p50") < 2.0, "{latency}");
    assert!(latency["p99"].as_f64().expect("p99") > 4_900.0, "{latency}");
    for file in ["m.hgrm", "m.svg"] {
        assert!(dir.join(file).exists(), "{file} not written");
    }
}

#[test]
fn merge_refuses_logs_that_never_overlapped() {
    let dir = temp_dir("merge-apart");
    let (a, b, out) = (dir.join("a.hlog"), dir.join("b.hlog"), dir.join("m"));
    write_hlog(&a, 1000, &[100, 100], 1_000);
    write_hlog(&b, 1010, &[100, 100], 1_000);
    let result = loadgen(&["merge", path_str(&a), path_str(&b), "-o", path_str(&out)]);
    expect_exit(&result, 1);
    let text = stderr(&result);
    assert!(
        text.contains("do not overlap") && text.contains("--start-at"),
        "{text}"
    );
    assert!(!dir.join("m.json").exists());

    // Not an interval log at all.
    std::fs::write(&b, "GETSEQ\n").expect("write");
    let result = loadgen(&["merge", path_str(&a), path_str(&b), "-o", path_str(&out)]);
    expect_exit(&result, 1);
    assert!(
        stderr(&result).contains("not an HdrHistogram interval log"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn runs_started_together_merge_into_one_result() {
    let server = Server::seqd(&[]);
    let addr = server.addr.to_string();
    let dir = temp_dir("merge-runs");
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 1_500;
    let start = start_ms.to_string();
    let runs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (addr, start, prefix) = (addr.clone(), start.clone(), dir.join(name));
            thread::spawn(move || {
                loadgen(&[
                    "run",
                    "--addr",
                    &addr,
                    "-c",
                    "2",
                    "-P",
                    "4",
                    "-d",
                    "2s",
                    "--warmup",
                    "200ms",
                    "--no-pin",
                    "--start-at",
                    &start,
                    "-o",
                    path_str(&prefix),
                ])
            })
        })
        .collect();
    for run in runs {
        expect_exit(&run.join().expect("a loadgen thread"), 0);
    }
    let out = dir.join("merged");
    let result = loadgen(&[
        "merge",
        path_str(&dir.join("a.hlog")),
        path_str(&dir.join("b.hlog")),
        "-o",
        path_str(&out),
    ]);
    expect_exit(&result, 0);
    let merged = json(&dir.join("merged.json"));
    let inputs = merged["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 2);
    let sum: u64 = inputs
        .iter()
        .map(|i| i["requests"].as_u64().expect("requests"))
        .sum();
    assert!(sum > 0);
    assert_eq!(merged["requests"].as_u64(), Some(sum));
    assert_eq!(merged["latency_us"]["count"].as_u64(), Some(sum));
    for input in inputs {
        // Started together: each run's measured part began inside the other's.
        assert!(
            input["intervals_used"].as_u64().expect("used") >= 1,
            "{input}"
        );
    }
    let rates: f64 = inputs
        .iter()
        .map(|i| i["throughput_rps"].as_f64().expect("rate"))
        .sum();
    // (serde_json reads floats back to within an ulp, not exactly.)
    let total = merged["throughput_rps"].as_f64().expect("rate");
    assert!((total - rates).abs() <= rates * 1e-12, "{total} vs {rates}");
}

#[test]
fn start_at_in_the_past_is_refused_before_connecting() {
    let result = loadgen(&[
        "run",
        "--addr",
        "127.0.0.1:1",
        "--start-at",
        "2020-01-01T00:00:00Z",
    ]);
    expect_exit(&result, 2);
    assert!(stderr(&result).contains("ago"), "{}", stderr(&result));
    let result = loadgen(&["run", "--addr", "127.0.0.1:1", "--start-at", "soon"]);
    expect_exit(&result, 2);
    assert!(stderr(&result).contains("RFC 3339"), "{}", stderr(&result));
}
