//! Decode + serve + encode of a 64 KiB buffer of pipelined requests, per protocol: the work a
//! session does for one full receive buffer, without the network. And one 1024-element RESP
//! array received whole or in pieces: decoding resumes where it stopped, so the pieces should
//! cost about what the whole does (re-parsing from the start at every line made two pieces
//! cost hundreds of times more).

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

/// A 1024-element RESP array (refused for its arity: the connection stays usable).
fn large_array() -> Vec<u8> {
    let mut array = b"*1024\r\n$12\r\nGETSEQ_BATCH\r\n".to_vec();
    for _ in 1..1024 {
        array.extend_from_slice(b"$5\r\nabcde\r\n");
    }
    array
}

/// One large array through a session, whole and split as the network may split it.
fn split_array(c: &mut Criterion) {
    let array = large_array();
    let header = memchr_lf(&array, 0);
    let mut lines = Vec::new();
    let mut start = 0;
    while start < array.len() {
        let end = memchr_lf(&array, start);
        lines.push(&array[start..end]);
        start = end;
    }
    let cases: [(&str, Vec<&[u8]>); 4] = [
        ("whole", vec![&array[..]]),
        ("header_then_rest", vec![&array[..header], &array[header..]]),
        ("line_by_line", lines),
        ("byte_by_byte", array.chunks(1).collect()),
    ];
    let mut group = c.benchmark_group("resp_array_1024");
    group.throughput(Throughput::Bytes(array.len() as u64));
    let mut state = LoopState::new(
        Arc::new(Registry::new(16, 1)),
        Limits {
            max_batch: 1_000_000,
            password: None,
            held_output: seqd::service::OUTPUT_HIGH_WATER,
        },
    );
    let mut out = Vec::with_capacity(BUFFER);
    let mut session = Session::new();
    for (name, pieces) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for piece in &pieces {
                    black_box(session.receive(black_box(piece), &mut state, &mut out));
                }
                assert_eq!(session.buffered(), 0, "the whole array was decoded");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// The offset just past the line feed at or after `from`.
fn memchr_lf(buf: &[u8], from: usize) -> usize {
    buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |i| from + i + 1)
}

criterion_group!(benches, session, codecs, split_array);
criterion_main!(benches);
