//! Decode + serve + encode of a 64 KiB buffer of pipelined requests, per protocol: the work a
//! session does for one full receive buffer, without the network.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seqd::protocol::binary::{self, encode_request, opcode};
use seqd::protocol::{Reply, text};
use seqd::sequence::Registry;
use seqd::service::{Limits, LoopState, Session};

const BUFFER: usize = 64 * 1024;

/// Repeats `frame` to fill (at most) a 64 KiB buffer; returns the buffer and frame count.
fn fill(frame: &[u8]) -> (Vec<u8>, u64) {
    let count = BUFFER / frame.len();
    (frame.repeat(count), count as u64)
}

fn inputs() -> Vec<(&'static str, Vec<u8>, u64)> {
    let mut binary_get = Vec::new();
    encode_request(&mut binary_get, opcode::GETSEQ, 0, 0);
    let mut binary_batch = Vec::new();
    encode_request(&mut binary_batch, opcode::GETSEQ_BATCH, 0, 100);
    let cases: [(&str, &[u8]); 5] = [
        ("binary_getseq", &binary_get),
        ("binary_getseq_batch", &binary_batch),
        ("text_inline_getseq", b"GETSEQ\r\n"),
        ("text_resp_getseq", b"*1\r\n$6\r\nGETSEQ\r\n"),
        ("text_named_getseq", b"GETSEQ orders\r\n"),
    ];
    cases
        .into_iter()
        .map(|(name, frame)| {
            let (buf, count) = fill(frame);
            (name, buf, count)
        })
        .collect()
}

/// The whole session path: decode in place, one reservation per run, encode replies.
fn session(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_64KiB");
    for (name, input, count) in inputs() {
        group.throughput(Throughput::Elements(count));
        let mut state = LoopState::new(
            Arc::new(Registry::new(16, 1)),
            Limits {
                max_batch: 1_000_000,
                password: None,
                held_output: seqd::service::OUTPUT_HIGH_WATER,
            },
        );
        let mut out = Vec::with_capacity(4 * BUFFER);
        let mut session = Session::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(session.receive(black_box(&input), &mut state, &mut out));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// The codecs alone: decode every frame, encode a reply for each.
fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_64KiB");
    let mut out = Vec::with_capacity(4 * BUFFER);
    for (name, input, count) in inputs() {
        group.throughput(Throughput::Elements(count));
        let is_binary = name.starts_with("binary");
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut pos = 0;
                let mut n = 1u64;
                while pos < input.len() {
                    let parsed = if is_binary {
                        binary::decode_request(&input[pos..])
                    } else {
                        text::decode_request(&input[pos..])
                    };
                    let Ok(parsed) = parsed else { break };
                    black_box(parsed.message);
                    pos += parsed.consumed;
                    if is_binary {
                        binary::encode_reply(&mut out, &Reply::Number(n));
                    } else {
                        text::encode_reply(&mut out, &Reply::Number(n));
                    }
                    n += 1;
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, session, codecs);
criterion_main!(benches);
