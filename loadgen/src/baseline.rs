//! The naive baseline server: "what loopback TCP allows" without any cleverness.
//!
//! Blocking sockets, one OS thread per connection, no shared state: each connection keeps its
//! own counter. A thread reads whatever bytes have arrived, answers every complete binary frame
//! in them (GETSEQ with the connection's next number) into one buffer, writes that buffer, and
//! reads again. That is the simplest server a competent programmer would write, so it marks
//! what the kernel's loopback path costs per request; seqd has to beat it while also sharing
//! counters between connections and keeping them durable.
//!
//! It speaks seqd's binary protocol with seqd's own codec, so the same load generator drives
//! both. Numbers are per connection (1, 2, 3, ... on each), so they are not unique across
//! connections: never use it with `--verify` over several connections.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use seqd::protocol::binary::{self, FRAME_LEN};
use seqd::protocol::{ParseError, ParseOk, Problem, Reply, Request};

/// Bytes read at once per connection.
const INPUT_BUFFER: usize = 64 * 1024;
/// The id `OPEN` answers for any name: there is only one (per-connection) counter.
const OPENED_ID: u32 = 1;

/// Binds `addr` (port 0 picks a free one).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Accepts connections forever, one thread each. Returns only if accepting fails for good.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // A peer that gave up while queued, or a momentary shortage: keep serving.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) if e.raw_os_error().is_some_and(is_transient_accept_error) => {
                eprintln!("baseline-server: accept failed: {e}; retrying");
                thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        let spawned = thread::Builder::new()
            .name("baseline-conn".into())
            .spawn(move || {
                if let Err(e) = handle(stream) {
                    // Resets at the end of a benchmark are normal; anything else is worth a line.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) {
                        eprintln!("baseline-server: connection from {peer}: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("baseline-server: cannot start a thread for {peer}: {e}; connection dropped");
        }
    }
}

fn is_transient_accept_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO | libc::EPERM
    )
}

/// Serves one connection until the peer closes it or sends something that is not a frame.
pub fn handle(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = vec![0u8; INPUT_BUFFER];
    let mut out = Vec::with_capacity(INPUT_BUFFER);
    let mut counter = Counter { next: 1 };
    let mut end = 0;
    loop {
        let n = match stream.read(&mut input[end..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        end += n;
        let (consumed, fatal) = answer(&input[..end], &mut counter, &mut out);
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if fatal {
            return Ok(());
        }
        input.copy_within(consumed..end, 0);
        end -= consumed;
    }
}

/// One connection's numbers.
#[derive(Debug)]
pub struct Counter {
    pub next: u64,
}

/// Answers every complete frame at the front of `input` into `out`. Returns the bytes
/// consumed and whether the stream is unusable (an error reply was written; close).
pub fn answer(input: &[u8], counter: &mut Counter, out: &mut Vec<u8>) -> (usize, bool) {
    let mut start = 0;
    while input.len() - start >= FRAME_LEN {
        match binary::decode_request(&input[start..]) {
            Ok(ParseOk { message, consumed }) => {
                let opcode = input[start + 2];
                start += consumed;
                let reply = match message {
                    Request::Get { .. } => {
                        let n = counter.next;
                        counter.next += 1;
                        Reply::Number(n)
                    }
                    Request::GetBatch { count, .. } if count > 0 => {
                        let first = counter.next;
                        counter.next += count;
                        Reply::Range { first, count }
                    }
                    Request::GetBatch { .. } => Reply::Error {
                        opcode,
                        problem: Problem::BatchOutOfRange { max: u64::MAX },
                    },
                    Request::Current { .. } => Reply::Current(counter.next),
                    Request::Ping { .. } => Reply::Pong { echo: None },
                    Request::Open { .. } => Reply::Opened(OPENED_ID),
                    // The baseline has no password: any AUTH is accepted, as seqd without one.
                    Request::Auth { .. } => Reply::Authenticated,
                    Request::Invalid(problem) | Request::Refused { problem, .. } => {
                        Reply::Error { opcode, problem }
                    }
                    // Text-protocol requests never come out of the binary decoder, and the
                    // baseline does not implement leases.
                    Request::Quit
                    | Request::RedisHandshake { .. }
                    | Request::Redis(_)
                    | Request::RedisError(_)
                    | Request::Nothing
                    | Request::Lease { .. }
                    | Request::Ack { .. }
                    | Request::AckAsClient { .. }
                    | Request::LeaseStats => Reply::Error {
                        opcode,
                        problem: Problem::UnknownOpcode(opcode),
                    },
                };
                binary::encode_reply(out, &reply);
            }
            Err(ParseError::Incomplete(_)) => break,
            Err(ParseError::Fatal(problem)) => {
                binary::encode_reply(out, &Reply::Error { opcode: 0, problem });
                return (input.len(), true);
            }
        }
    }
    (start, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqd::protocol::binary::opcode;

    fn frame(op: u8, argument: u64) -> Vec<u8> {
        let mut f = Vec::new();
        binary::encode_request(&mut f, op, 0, argument);
        f
    }

    #[test]
    fn answers_each_complete_frame_and_keeps_a_partial_one() {
        let mut input = frame(opcode::GETSEQ, 0);
        input.extend(frame(opcode::GETSEQ, 0));
        input.extend(&frame(opcode::GETSEQ_BATCH, 10)[..7]);
        let mut counter = Counter { next: 1 };
        let mut out = Vec::new();
        let (consumed, fatal) = answer(&input, &mut counter, &mut out);
        assert_eq!((consumed, fatal), (32, false));
        let mut expected = Vec::new();
        binary::encode_reply(&mut expected, &Reply::Number(1));
        binary::encode_reply(&mut expected, &Reply::Number(2));
        assert_eq!(out, expected);

        // The rest of the batch frame arrives.
        out.clear();
        let batch = frame(opcode::GETSEQ_BATCH, 10);
        assert_eq!(answer(&batch, &mut counter, &mut out), (16, false));
        expected.clear();
        binary::encode_reply(
            &mut expected,
            &Reply::Range {
                first: 3,
                count: 10,
            },
        );
        assert_eq!(out, expected);
        assert_eq!(counter.next, 13);
    }

    #[test]
    fn garbage_gets_an_error_reply_and_closes() {
        let mut counter = Counter { next: 1 };
        let mut out = Vec::new();
        let (_, fatal) = answer(b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\n", &mut counter, &mut out);
        assert!(fatal);
        assert_eq!(out[0], binary::MAGIC);
        assert_ne!(out[3], binary::STATUS_OK);
    }
}
