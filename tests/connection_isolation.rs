//! Connection isolation: every reply a connection receives answers a request it sent — also
//! when the slot, descriptor and buffers of a connection that closed with replies still
//! queued are reused by the next one.
//!
//! The attack: clients pipeline requests without reading their replies (so replies pile up
//! on the server), then close. A fresh client must receive exactly its own reply.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use seqd_test_support::{PATIENCE, SeqdProcess, read_to_close};

const FRAME: usize = 16;
const GETSEQ: u8 = 0x01;
const GETSEQ_BATCH: u8 = 0x02;
const PING: u8 = 0x04;
const OPEN: u8 = 0x05;

fn frame(opcode: u8, sequence: u32, argument: u64) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[0] = 0x9E;
    f[1] = 0x01;
    f[2] = opcode;
    f[4..8].copy_from_slice(&sequence.to_be_bytes());
    f[8..16].copy_from_slice(&argument.to_be_bytes());
    f
}

/// A binary reply header: (opcode, status, count, value).
fn reply(f: &[u8]) -> (u8, u8, u32, u64) {
    assert_eq!(f[0], 0x9E, "not a binary reply: {f:02x?}");
    (
        f[2],
        f[3],
        u32::from_be_bytes(f[4..8].try_into().unwrap()),
        u64::from_be_bytes(f[8..16].try_into().unwrap()),
    )
}

#[derive(Clone, Copy, Debug)]
enum Flood {
    Binary,
    Text,
}

#[derive(Clone, Copy, Debug)]
enum Close {
    /// SO_LINGER 0: the close resets the connection.
    Reset,
    /// Shut down our side first (the server sees end of input with replies queued), then close.
    Fin,
}

fn connect_small(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to seqd");
    // A small receive buffer: the server's replies back up after a few kilobytes.
    socket2::SockRef::from(&stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    stream
}

fn close(stream: TcpStream, how: Close) {
    match how {
        Close::Reset => socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap(),
        Close::Fin => {
            let _ = stream.shutdown(Shutdown::Write);
            thread::sleep(Duration::from_millis(20));
        }
    }
    drop(stream);
}

/// Connections that pipeline requests without reading a reply until the server stops taking
/// them (or a bound passes), then close.
fn flood_then_close(addr: SocketAddr, flood: Flood, how: Close) {
    let chunk: Vec<u8> = match flood {
        Flood::Binary => frame(GETSEQ, 0, 0).repeat(4096),
        Flood::Text => b"GETSEQ\r\n".repeat(8192),
    };
    let mut sockets: Vec<TcpStream> = (0..20)
        .map(|_| {
            let s = connect_small(addr);
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused_rounds = 0;
    while Instant::now() < deadline && refused_rounds < 5 {
        let mut sent = false;
        let mut i = 0;
        while i < sockets.len() {
            match sockets[i].write(&chunk) {
                Ok(_) => {
                    sent = true;
                    i += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => i += 1,
                // Closed by the server at --client-output-limit: also a close with replies
                // queued, which is what the fresh clients must not see.
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    drop(sockets.swap_remove(i));
                }
                Err(e) => panic!("flooding: {e}"),
            }
        }
        if sockets.is_empty() {
            break;
        }
        if sent {
            refused_rounds = 0;
        } else {
            refused_rounds += 1;
            thread::sleep(Duration::from_millis(50));
        }
    }
    for s in sockets {
        close(s, how);
    }
}

/// Fresh clients of both protocols each send one request and must receive exactly its reply
/// and nothing else before the server closes.
fn assert_fresh_clients_get_only_their_replies(seqd: &SeqdProcess) {
    for i in 0..8 {
        let mut text = seqd.connect();
        text.write_all(b"PING\r\nQUIT\r\n").unwrap();
        let got = read_to_close(&mut text);
        assert_eq!(
            got,
            b"+PONG\r\n+OK\r\n",
            "text client {i} received {} bytes, starting {:02x?}",
            got.len(),
            &got[..got.len().min(32)]
        );

        let mut binary = seqd.connect();
        binary.write_all(&frame(PING, 0, 0)).unwrap();
        binary.shutdown(Shutdown::Write).unwrap();
        let got = read_to_close(&mut binary);
        assert_eq!(
            got.len(),
            FRAME,
            "binary client {i} received {} bytes, starting {:02x?}",
            got.len(),
            &got[..got.len().min(32)]
        );
        assert_eq!(reply(&got), (PING, 0, 0, 0));
    }
}

#[test]
fn closed_connections_replies_never_reach_new_connections() {
    // Held (the client closes with replies queued), and closed by the server at its limit.
    let output_limits: [&[&str]; 2] = [&["--client-output-limit=0"], &[]];
    for (loops, limit) in [1, 2]
        .into_iter()
        .flat_map(|l| output_limits.map(|o| (l, o)))
    {
        let mut args = vec!["--in-memory"];
        args.extend_from_slice(limit);
        let seqd = SeqdProcess::start_with_loops(loops, &args);
        for flood in [Flood::Binary, Flood::Text] {
            for how in [Close::Reset, Close::Fin] {
                for _round in 0..2 {
                    flood_then_close(seqd.addr, flood, how);
                    assert_fresh_clients_get_only_their_replies(&seqd);
                }
            }
        }
    }
}

/// Opens a named sequence on `stream`; returns its binary id.
fn open(stream: &mut TcpStream, name: &str) -> u32 {
    let mut request = frame(OPEN, 0, name.len() as u64).to_vec();
    request.extend_from_slice(name.as_bytes());
    stream.write_all(&request).unwrap();
    let mut header = [0u8; FRAME];
    stream.read_exact(&mut header).unwrap();
    let (opcode, status, _, id) = reply(&header);
    assert_eq!((opcode, status), (OPEN, 0), "OPEN {name} refused");
    u32::try_from(id).unwrap()
}

/// A client that tags its requests: it takes batches of `tag` numbers from a sequence of its
/// own, so every reply it may receive has count `tag`, and the values follow one another
/// exactly. Anything else is a reply meant for someone else.
fn tagged_client(addr: SocketAddr, tag: u64, stop: Arc<AtomicBool>) -> usize {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let id = open(&mut stream, &format!("tagged-{tag}"));
    let request = frame(GETSEQ_BATCH, id, tag).repeat(64);
    let mut expected = 1;
    let mut replies = 0;
    let mut buf = vec![0u8; FRAME * 64];
    while !stop.load(Ordering::Relaxed) || replies == 0 {
        stream.write_all(&request).unwrap();
        stream.read_exact(&mut buf).unwrap();
        for f in buf.chunks_exact(FRAME) {
            assert_eq!(
                reply(f),
                (GETSEQ_BATCH, 0, tag as u32, expected),
                "tagged client {tag} received a reply it did not ask for"
            );
            expected += tag;
            replies += 1;
        }
    }
    replies
}

/// Connections that each pipeline requests tagged by their own batch size, read at most the
/// first reply (which must be theirs) and reset.
fn churn(addr: SocketAddr, thread_index: u64, connections: u64) {
    for c in 0..connections {
        let mut stream = connect_small(addr);
        let tag = 2 + thread_index * connections + c;
        let request = frame(GETSEQ_BATCH, 0, tag).repeat(512);
        stream.write_all(&request).unwrap();
        if c % 2 == 0 {
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut first = [0u8; FRAME];
            stream.read_exact(&mut first).unwrap();
            let (opcode, status, count, _) = reply(&first);
            assert_eq!(
                (opcode, status, u64::from(count)),
                (GETSEQ_BATCH, 0, tag),
                "a new connection's first reply is not its own"
            );
        }
        close(stream, Close::Reset);
    }
}

#[test]
fn every_reply_answers_a_request_of_its_own_connection_under_churn() {
    for loops in [1, 2] {
        let seqd = SeqdProcess::start_with_loops(loops, &["--in-memory"]);
        let stop = Arc::new(AtomicBool::new(false));
        let tagged: Vec<_> = (1..=4u64)
            .map(|tag| {
                let stop = stop.clone();
                let addr = seqd.addr;
                thread::spawn(move || tagged_client(addr, 1000 + tag, stop))
            })
            .collect();
        let churners: Vec<_> = (0..2u64)
            .map(|t| {
                let addr = seqd.addr;
                thread::spawn(move || churn(addr, t, 1000))
            })
            .collect();
        for churner in churners {
            churner
                .join()
                .expect("a churning connection got a foreign reply");
        }
        stop.store(true, Ordering::Relaxed);
        for client in tagged {
            let replies = client.join().expect("a tagged client got a foreign reply");
            assert!(replies > 0);
        }
        assert_fresh_clients_get_only_their_replies(&seqd);
    }
}
