//! Uniqueness under concurrency: many connections, both protocols, pipelines, batches.
//! The union of everything issued must be exactly one contiguous range with no duplicate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use seqd::client::{Request, Response};
use seqd::protocol::binary::{self, encode_request, opcode};
use seqd_test_support::SeqdProcess;

const CONNECTIONS: usize = 16;
const PER_CONNECTION: usize = 10_000;

/// Asserts that `numbers` is exactly `first..first + len` once each.
fn assert_contiguous(mut numbers: Vec<u64>, first: u64) {
    numbers.sort_unstable();
    for (i, &n) in numbers.iter().enumerate() {
        assert_eq!(n, first + i as u64, "duplicate or gap at position {i}");
    }
}

fn assert_increasing(numbers: &[u64]) {
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "numbers on one connection must increase"
    );
}

/// Sends `count` text GETSEQs pipelined (in one write) and parses the `:N` replies.
fn text_pipeline(mut conn: TcpStream, count: usize) -> Vec<u64> {
    let request = b"GETSEQ\r\n".repeat(count);
    let writer = {
        let mut conn = conn.try_clone().unwrap();
        thread::spawn(move || conn.write_all(&request).unwrap())
    };
    let mut numbers = Vec::with_capacity(count);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while numbers.len() < count {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = buf[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[start..start + end];
            assert_eq!(
                line[0],
                b':',
                "unexpected reply {:?}",
                String::from_utf8_lossy(line)
            );
            numbers.push(std::str::from_utf8(&line[1..]).unwrap().parse().unwrap());
            start += end + 2;
        }
        buf.drain(..start);
    }
    writer.join().unwrap();
    numbers
}

#[test]
fn sixteen_connections_both_protocols_union_is_one_contiguous_range() {
    // One event loop: a single writer per sequence (load and store); two: compare-and-swap.
    for loops in [1, 2] {
        union_is_one_contiguous_range(loops);
    }
}

fn union_is_one_contiguous_range(loops: usize) {
    let server = SeqdProcess::start_with_loops(loops, &[]);
    let mut workers = Vec::new();
    for i in 0..CONNECTIONS {
        let binary_client = server.client();
        let text_conn = server.connect();
        workers.push(thread::spawn(move || {
            let mut client = binary_client;
            let requests = vec![Request::Get(0); PER_CONNECTION];
            let numbers: Vec<u64> = client
                .pipeline(&requests)
                .unwrap()
                .into_iter()
                .map(|r| match r.unwrap() {
                    Response::Number(n) => n,
                    other => panic!("connection {i}: unexpected {other:?}"),
                })
                .collect();
            assert_increasing(&numbers);
            numbers
        }));
        workers.push(thread::spawn(move || {
            let numbers = text_pipeline(text_conn, PER_CONNECTION);
            assert_increasing(&numbers);
            numbers
        }));
    }
    let all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.len(), 2 * CONNECTIONS * PER_CONNECTION);
    assert_contiguous(all, 1);
}

#[test]
fn hundred_thousand_frames_written_in_odd_sized_chunks() {
    const FRAMES: usize = 100_000;
    let server = SeqdProcess::start(&[]);

    // Binary: frames split at every possible offset across writes.
    let mut conn = server.connect();
    let mut stream = Vec::with_capacity(FRAMES * binary::FRAME_LEN);
    for _ in 0..FRAMES {
        encode_request(&mut stream, opcode::GETSEQ, 0, 0);
    }
    let writer = {
        let mut conn = conn.try_clone().unwrap();
        thread::spawn(move || {
            let sizes = [1usize, 7, 13, 4093, 3, 65_537, 15, 17, 999];
            let mut pos = 0;
            for size in sizes.iter().cycle() {
                if pos == stream.len() {
                    break;
                }
                let end = (pos + size).min(stream.len());
                conn.write_all(&stream[pos..end]).unwrap();
                pos = end;
            }
        })
    };
    let mut replies = vec![0u8; FRAMES * binary::FRAME_LEN];
    conn.read_exact(&mut replies).unwrap();
    writer.join().unwrap();
    for (i, frame) in replies.chunks(binary::FRAME_LEN).enumerate() {
        let reply = binary::decode_reply(frame).unwrap().message;
        assert_eq!((reply.status, reply.value), (0, i as u64 + 1), "reply {i}");
    }

    // Text: the same with lines split anywhere, CRLF and LF mixed.
    let mut conn = server.connect();
    let mut stream = Vec::new();
    for i in 0..FRAMES {
        stream.extend_from_slice(if i % 2 == 0 {
            b"GETSEQ\r\n"
        } else {
            b"getseq\n"
        });
    }
    let writer = {
        let mut conn = conn.try_clone().unwrap();
        thread::spawn(move || {
            let sizes = [1usize, 5, 9, 4091, 2, 10_007];
            let mut pos = 0;
            for size in sizes.iter().cycle() {
                if pos == stream.len() {
                    break;
                }
                let end = (pos + size).min(stream.len());
                conn.write_all(&stream[pos..end]).unwrap();
                pos = end;
            }
        })
    };
    let mut expected = Vec::new();
    for n in FRAMES as u64 + 1..=2 * FRAMES as u64 {
        expected.extend_from_slice(format!(":{n}\r\n").as_bytes());
    }
    let mut got = vec![0u8; expected.len()];
    conn.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(
        got == expected,
        "text replies differ from the expected sequence"
    );
}

#[test]
fn batches_never_overlap_concurrent_singles() {
    let server = SeqdProcess::start(&[]);
    let mut workers = Vec::new();
    for i in 0..8u64 {
        let mut client = server.client();
        workers.push(thread::spawn(move || {
            let mut numbers = Vec::new();
            for round in 0..200u64 {
                let requests: Vec<Request> = (0..16)
                    .map(|j| match (i + round + j) % 3 {
                        0 => Request::Get(0),
                        1 => Request::GetBatch(0, 1 + (round * 7 + j) % 50),
                        _ => Request::GetBatch(0, 1),
                    })
                    .collect();
                for reply in client.pipeline(&requests).unwrap() {
                    match reply.unwrap() {
                        Response::Number(n) => numbers.push(n),
                        Response::Range(range) => numbers.extend(range),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_increasing(&numbers);
            numbers
        }));
    }
    let all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_contiguous(all, 1);
}
