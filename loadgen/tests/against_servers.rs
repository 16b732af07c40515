//! The load generator against real servers on loopback: seqd (binary, RESP, inline) and
//! redis-server, every output file, verification across a restart, and each error path.
//! Runs are bounded by request counts or sub-second durations: these tests check behaviour,
//! never timings.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use support::{
    Server, expect_exit, first_error, json, loadgen, loadgen_json, stderr, stdout, temp_dir,
};

#[test]
fn closed_loop_binary_writes_every_file_and_verifies() {
    let seqd = Server::seqd(&[]);
    let dir = temp_dir("closed");
    let prefix = dir.join("seqd");
    let addr = seqd.addr.to_string();
    let out = loadgen(&[
        "run",
        "--addr",
        &addr,
        "-c",
        "4",
        "-P",
        "16",
        "-t",
        "2",
        "-n",
        "20000",
        "--warmup",
        "0s",
        "--verify",
        "--no-pin",
        "-o",
        prefix.to_str().unwrap(),
        "--label",
        "seqd test",
    ]);
    expect_exit(&out, 0);
    let summary = stdout(&out);
    for text in [
        "seqd test",
        "throughput",
        "p99.99",
        "errors       0",
        "client CPU",
        "verify       OK",
    ] {
        assert!(summary.contains(text), "{text:?} missing from:\n{summary}");
    }

    let result = json(&dir.join("seqd.json"));
    assert_eq!(result["schema"], "seqd-loadgen/1");
    assert_eq!(result["totals"]["requests"], 20000);
    assert_eq!(result["totals"]["numbers"], 20000);
    assert_eq!(result["config"]["mode"], "closed");
    assert_eq!(result["config"]["threads"], 2);
    assert_eq!(result["verify"]["duplicates"], 0);
    assert_eq!(result["verify"]["numbers"], 20000);
    assert_eq!(result["trustworthy"], true);
    assert_eq!(result["latency_us"]["count"], 20000);
    assert!(result["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(!result["time_series"].as_array().unwrap().is_empty());

    let hgrm = std::fs::read_to_string(dir.join("seqd.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(hgrm.contains("Total count    =        20000]"), "{hgrm}");
    assert!(hgrm.trim_end().ends_with("SubBuckets     =         2048]"));

    // The interval log decodes (V2 deflate) and its intervals add up to the total.
    let hlog = std::fs::read(dir.join("seqd.hlog")).unwrap();
    let mut deserializer = Deserializer::new();
    let mut total = 0;
    for entry in IntervalLogIterator::new(&hlog) {
        if let Ok(LogEntry::Interval(interval)) = entry {
            let encoded = interval.encoded_histogram();
            let bytes = base64_decode(encoded);
            let h: hdrhistogram::Histogram<u64> = deserializer
                .deserialize(&mut &bytes[..])
                .expect("V2 histogram");
            total += h.len();
        }
    }
    assert_eq!(total, 20000);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn base64_decode(text: &str) -> Vec<u8> {
    // Small standard-alphabet decoder so the test needs no extra crate.
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn text_protocols_with_batches_and_named_sequences() {
    let seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    for target in ["resp", "inline", "binary"] {
        let result = loadgen_json(
            &[
                "run",
                "--addr",
                &addr,
                "--target",
                target,
                "--batch",
                "10",
                "--sequence",
                "orders",
                "-c",
                "3",
                "-P",
                "4",
                "-n",
                "3000",
                "--warmup",
                "0s",
                "--verify",
                "--json",
            ],
            0,
        );
        assert_eq!(result["totals"]["requests"], 3000, "{target}");
        assert_eq!(result["totals"]["numbers"], 30000, "{target}");
        assert_eq!(result["verify"]["duplicates"], 0, "{target}");
        assert_eq!(result["config"]["sequence"], "orders");
    }
    // All three drew from the same named sequence, one after the other.
    let mut client = seqd::client::Client::connect(seqd.addr).unwrap();
    let orders = client.open("orders").unwrap();
    assert_eq!(client.current_of(orders).unwrap(), 1 + 3 * 30000);
}

#[test]
fn open_loop_below_the_connection_count_still_sends() {
    let seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    // 8 requests per second over 10 connections and 2 threads, for one second.
    let result = loadgen_json(
        &[
            "run", "--addr", &addr, "--rate", "8", "-c", "10", "-t", "2", "-d", "1s", "--warmup",
            "0s", "--json",
        ],
        0,
    );
    assert_eq!(result["config"]["mode"], "open");
    assert_eq!(result["totals"]["planned"], 8);
    assert_eq!(result["totals"]["requests"], 8);
    assert!(result["send_lag_us"]["count"].as_u64().unwrap() >= 8);
    assert!(result["service_time_us"]["count"].as_u64().unwrap() >= 8);
}

#[test]
fn send_granularity_groups_due_requests_and_counts_their_wait() {
    let seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    // 1000 requests/s on one connection with a 10 ms granularity: requests go out in groups
    // of about 10, each up to 10 ms after its planned time, and that wait is in its latency.
    let result = loadgen_json(
        &[
            "run",
            "--addr",
            &addr,
            "--rate",
            "1000",
            "-c",
            "1",
            "-P",
            "64",
            "-d",
            "500ms",
            "--warmup",
            "0s",
            "--send-granularity",
            "10ms",
            "--no-pin",
            "--json",
        ],
        0,
    );
    assert_eq!(result["config"]["send_granularity_us"], 10_000.0);
    let lag_p90 = result["send_lag_us"]["p90"].as_f64().unwrap();
    assert!(lag_p90 >= 5_000.0, "send lag p90 {lag_p90} us");
    let latency_p90 = result["latency_us"]["p90"].as_f64().unwrap();
    assert!(
        latency_p90 >= lag_p90,
        "latency {latency_p90} includes the lag {lag_p90}"
    );
}

#[test]
fn open_loop_writes_service_time_beside_latency() {
    let seqd = Server::seqd(&[]);
    let dir = temp_dir("open");
    let prefix = dir.join("open");
    let addr = seqd.addr.to_string();
    let out = loadgen(&[
        "run",
        "--addr",
        &addr,
        "--target",
        "resp",
        "--rate",
        "2000",
        "-c",
        "4",
        "-P",
        "8",
        "-d",
        "500ms",
        "--warmup",
        "100ms",
        "-o",
        prefix.to_str().unwrap(),
    ]);
    expect_exit(&out, 0);
    let summary = stdout(&out);
    assert!(
        summary.contains("coordinated-omission corrected"),
        "{summary}"
    );
    assert!(summary.contains("service"), "{summary}");
    assert!(dir.join("open.service.hgrm").is_file());
    let hlog = std::fs::read_to_string(dir.join("open.hlog")).unwrap();
    assert!(hlog.contains(",HISTF"), "{hlog}");
    assert!(hlog.contains("Tag=service,"), "{hlog}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn redis_incr_is_measured_and_verified_by_the_same_tool() {
    let Some(redis) = Server::redis("redis_incr_is_measured_and_verified_by_the_same_tool") else {
        return;
    };
    let addr = redis.addr.to_string();
    let result = loadgen_json(
        &[
            "run", "--addr", &addr, "--target", "redis", "-c", "4", "-P", "8", "-n", "5000",
            "--warmup", "0s", "--verify", "--json",
        ],
        0,
    );
    assert_eq!(result["totals"]["requests"], 5000);
    assert_eq!(result["verify"]["duplicates"], 0);
    assert_eq!(result["verify"]["non_increasing"], 0);
    // INCRBY for batches: ranges end at the number Redis answers.
    let result = loadgen_json(
        &[
            "run",
            "--addr",
            &addr,
            "--target",
            "redis",
            "--batch",
            "5",
            "--sequence",
            "k2",
            "-c",
            "2",
            "-n",
            "100",
            "--warmup",
            "0s",
            "--verify",
            "--json",
        ],
        0,
    );
    assert_eq!(result["verify"]["numbers"], 500);
    assert_eq!(result["verify"]["lowest"], 1);
    assert_eq!(result["verify"]["highest"], 500);
}

#[test]
fn verify_file_catches_numbers_repeated_across_a_restart() {
    let dir = temp_dir("restart");
    let file = dir.join("numbers.vfy");
    let file = file.to_str().unwrap();
    let run_once = |server: &Server| {
        let addr = server.addr.to_string();
        let out = loadgen(&[
            "run",
            "--addr",
            &addr,
            "-c",
            "2",
            "-P",
            "4",
            "-n",
            "1000",
            "--warmup",
            "0s",
            "--verify-file",
            file,
        ]);
        expect_exit(&out, 0);
    };
    let mut first = Server::seqd(&[]);
    run_once(&first);
    first.kill();
    // A restart that continues above the last number: still unique.
    let second = Server::seqd(&["--initial=5000"]);
    run_once(&second);
    let out = loadgen(&["verify", file]);
    expect_exit(&out, 0);
    assert!(
        stdout(&out).contains("verify OK: 2000 numbers"),
        "{}",
        stdout(&out)
    );
    // A restart that starts again at 1 hands out the same numbers again: caught.
    let third = Server::seqd(&[]);
    run_once(&third);
    let out = loadgen(&["verify", file]);
    expect_exit(&out, 4);
    assert!(stdout(&out).contains("verify FAILED"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1000 duplicates"), "{}", stdout(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refused_connection_is_a_clear_error() {
    let port = support::free_port();
    let out = loadgen(&["run", "--addr", &format!("127.0.0.1:{port}"), "-n", "10"]);
    expect_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
    assert!(err.contains("nothing is listening"), "{err}");
}

#[test]
fn server_closing_mid_run_is_counted_and_fails_the_run() {
    let mut seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    let child = std::thread::spawn(move || {
        loadgen(&[
            "run", "--addr", &addr, "-c", "4", "-P", "4", "-d", "5s", "--warmup", "0s", "--json",
        ])
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    seqd.kill();
    let out = child.join().unwrap();
    expect_exit(&out, 3);
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["errors"]["closed_by_server"], 4);
    assert_eq!(result["trustworthy"], false);
    assert!(
        first_error(&result).contains("closed"),
        "{}",
        result["errors"]
    );
}

#[test]
fn several_addresses_follow_the_leader_past_a_dead_node_and_a_standby() {
    use seqd::protocol::binary::{self, opcode};
    use seqd::protocol::{Problem, Reply};
    let seqd = Server::seqd(&[]);
    // A standby as a cluster node answers: every binary request refused with NOTLEADER and
    // the leader's address (the real seqd).
    let leader: &'static str = Box::leak(seqd.addr.to_string().into_boxed_str());
    let mut refusal = Vec::new();
    binary::encode_reply(
        &mut refusal,
        &Reply::Error {
            opcode: opcode::GETSEQ,
            problem: Problem::NotLeader {
                leader: Some(leader),
            },
        },
    );
    let standby = TcpListener::bind("127.0.0.1:0").unwrap();
    let standby_addr = standby.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in standby.incoming() {
            let Ok(mut stream) = stream else { return };
            let refusal = refusal.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while stream.read_exact(&mut buf).is_ok() {
                    if stream.write_all(&refusal).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dead = format!("127.0.0.1:{}", support::free_port());
    let addrs = format!("{dead},{standby_addr},{leader}");
    let result = loadgen_json(
        &[
            "run", "--addr", &addrs, "-c", "4", "-P", "8", "-d", "500ms", "--warmup", "0s",
            "--verify", "--no-pin", "--json",
        ],
        0,
    );
    // Each connection: the dead node (refused), then the standby, redirected to the leader.
    assert_eq!(result["errors"]["total"], 0, "{}", result["errors"]);
    assert!(result["errors"]["redirects"].as_u64().unwrap() >= 4);
    assert!(result["errors"]["reconnects"].as_u64().unwrap() >= 8);
    assert!(result["totals"]["numbers"].as_u64().unwrap() > 0);
    assert_eq!(result["verify"]["duplicates"], 0);
}

#[test]
fn malformed_replies_are_counted_and_fail_the_run() {
    // A fake server that answers every binary request with text.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while stream.read_exact(&mut buf).is_ok() {
                    if stream.write_all(b":1\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let result = loadgen_json(
        &[
            "run", "--addr", &addr, "-c", "1", "-n", "5", "--warmup", "0s", "--json",
        ],
        3,
    );
    assert_eq!(result["errors"]["malformed_reply"], 1);
    assert!(
        first_error(&result).contains("malformed reply"),
        "{}",
        result["errors"]
    );
}

#[test]
fn server_error_replies_are_counted() {
    let seqd = Server::seqd(&["--max-batch=100"]);
    let addr = seqd.addr.to_string();
    let result = loadgen_json(
        &[
            "run", "--addr", &addr, "--batch", "1000", "-c", "1", "-n", "10", "--warmup", "0s",
            "--json",
        ],
        3,
    );
    assert_eq!(result["errors"]["server_error"], 10);
    assert!(
        first_error(&result).contains("--max-batch"),
        "{}",
        result["errors"]
    );
}

#[test]
fn capacity_search_finds_a_rate_and_says_how() {
    let seqd = Server::seqd(&[]);
    let dir = temp_dir("slo");
    let prefix = dir.join("capacity");
    let addr = seqd.addr.to_string();
    let out = loadgen(&[
        "run",
        "--addr",
        &addr,
        "-c",
        "2",
        "-P",
        "4",
        "--slo",
        "p99<=100ms",
        "--probe-duration",
        "300ms",
        "--max-probes",
        "3",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "-o",
        prefix.to_str().unwrap(),
    ]);
    expect_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("closed-loop"), "{err}");
    assert!(err.contains("capacity:"), "{err}");
    assert!(err.contains("how:"), "{err}");
    let report = json(&dir.join("capacity.json"));
    assert_eq!(report["kind"], "capacity-search");
    assert!(report["capacity_rps"].as_f64().unwrap() > 0.0);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps[0]["kind"], "closed-loop");
    assert_eq!(steps.last().unwrap()["kind"], "confirm");
    assert_eq!(steps.last().unwrap()["passed"], true);
    assert!(dir.join("capacity.confirm.hgrm").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ramp_records_one_row_per_step() {
    let seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    let report = loadgen_json(
        &[
            "run",
            "--addr",
            &addr,
            "-c",
            "2",
            "--ramp",
            "100:300:100:300ms",
            "--warmup",
            "0s",
            "--json",
        ],
        0,
    );
    assert_eq!(report["kind"], "ramp");
    let rates: Vec<f64> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rate"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, vec![100.0, 200.0, 300.0]);
}

#[test]
fn in_process_mode_and_plot() {
    let dir = temp_dir("inproc");
    let report = loadgen_json(
        &[
            "in-process",
            "-t",
            "2",
            "--batch",
            "10",
            "-d",
            "200ms",
            "--json",
        ],
        0,
    );
    assert_eq!(report["kind"], "in-process");
    assert!(report["reservations"].as_u64().unwrap() > 0);
    assert_eq!(report["contiguous"], true);

    // Two real results overlaid in one plot.
    let seqd = Server::seqd(&[]);
    let addr = seqd.addr.to_string();
    for (name, target) in [("binary", "binary"), ("resp", "resp")] {
        let prefix = dir.join(name);
        let out = loadgen(&[
            "run",
            "--addr",
            &addr,
            "--target",
            target,
            "-c",
            "2",
            "-n",
            "2000",
            "--warmup",
            "0s",
            "-o",
            prefix.to_str().unwrap(),
            "--label",
            name,
        ]);
        expect_exit(&out, 0);
    }
    let svg = dir.join("plot.svg");
    let binary = dir.join("binary.json");
    let resp = dir.join("resp.hgrm");
    let resp = format!("{}=seqd RESP", resp.display());
    let out = loadgen(&[
        "plot",
        "-o",
        svg.to_str().unwrap(),
        "--title",
        "binary vs RESP",
        binary.to_str().unwrap(),
        &resp,
    ]);
    expect_exit(&out, 0);
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in ["binary vs RESP", "binary", "seqd RESP"] {
        assert!(text.contains(label), "{label} missing from the plot");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_explains_and_bad_arguments_say_how_to_fix_them() {
    let out = loadgen(&["run", "--help"]);
    expect_exit(&out, 0);
    let help = stdout(&out);
    for flag in [
        "--connections",
        "--pipeline",
        "--rate",
        "--slo",
        "--ramp",
        "--verify",
        "--cpus",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = loadgen(&["run", "--slo", "p99=1ms"]);
    expect_exit(&out, 1);
    assert!(stderr(&out).contains("--slo"), "{}", stderr(&out));
    let out = loadgen(&["run", "--addr", "nowhere"]);
    expect_exit(&out, 1);
    assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));
}
