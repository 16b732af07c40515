//! The stream hub driven as the event loop drives it: connections, bytes, ticks.

use super::*;
use crate::commits::Commits;
use crate::lease::LeaseSettings;

const A: ConnKey = 1;
const B: ConnKey = 2;

fn settings() -> StreamSettings {
    StreamSettings {
        interval: Duration::from_millis(1),
        burst: 64,
        ttl: Duration::from_secs(60),
        max_streams: 2,
        max_per_peer: 0,
        max_count: 1000,
        sequence: "stream".into(),
    }
}

struct Fixture {
    hub: StreamHub,
    registry: Arc<Registry>,
    records: Arc<LeasesAndStreams>,
    now: Now,
}

fn fixture_with(registry: Registry, commits: Commits) -> Fixture {
    let registry = Arc::new(registry);
    let records = Arc::new(LeasesAndStreams::empty(commits, LeaseSettings::default()));
    let now = Now {
        at: Instant::now(),
        unix_ms: 1_700_000_000_000,
    };
    let hub = StreamHub::new(settings(), registry.clone(), records.clone(), now);
    Fixture {
        hub,
        registry,
        records,
        now,
    }
}

fn fixture() -> Fixture {
    fixture_with(Registry::new(8, 100), Commits::memory_only())
}

fn con(count: u32, id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Message::Connect {
        count,
        client_id: id,
    }
    .encode(&mut out);
    out
}

fn ack(sequence: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Message::Ack { sequence }.encode(&mut out);
    out
}

/// What the server sent: (position, number) per NUM, and CHK as (n, u32::MAX).
fn sent(mut bytes: &[u8]) -> Vec<(u32, u32)> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let ParseOk { message, consumed } = wire::decode(bytes).unwrap();
        messages.push(match message {
            Message::Number { sequence, number } => (sequence, number),
            Message::Checksum { sequence, .. } => (sequence, u32::MAX),
            other => panic!("the server sent {other:?}"),
        });
        bytes = &bytes[consumed..];
    }
    messages
}

impl Fixture {
    fn advance(&mut self, by: Duration) {
        self.now.at += by;
        self.now.unix_ms += by.as_millis() as u64;
    }

    /// One tick; what `key` is sent.
    fn tick(&mut self, key: ConnKey) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for due in self.hub.tick(self.now) {
            if due == key {
                self.hub.fill(key, &mut out, self.now);
            }
        }
        sent(&out)
    }

    fn send(&mut self, key: ConnKey, bytes: &[u8]) -> Verdict {
        self.hub.receive(key, bytes, self.now)
    }
}

fn numbers(first: u32, positions: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    positions.into_iter().map(|p| (p, first + p)).collect()
}

#[test]
fn a_whole_stream_then_its_checksum() {
    let mut f = fixture();
    f.hub.open(A, None);
    assert_eq!(f.send(A, &con(5, b"abc")), Verdict::Open);
    assert_eq!(
        f.tick(A),
        numbers(100, 0..5),
        "pushed without waiting for acks"
    );
    assert_eq!(f.tick(A), vec![], "nothing until acks or the resend delay");
    for position in 0..5 {
        assert_eq!(f.send(A, &ack(position)), Verdict::Open);
    }
    assert_eq!(
        f.tick(A),
        vec![(5, u32::MAX)],
        "all acknowledged: the checksum"
    );
    let mut out = Vec::new();
    f.advance(RESEND_AFTER);
    f.hub.fill(A, &mut out, f.now);
    let ParseOk { message, .. } = wire::decode(&out).unwrap();
    assert_eq!(
        message,
        Message::Checksum {
            sequence: 5,
            checksum: &wire::checksum(100..105),
        },
        "resent until acknowledged"
    );
    assert_eq!(f.records.streams.records().len(), 1);
    assert_eq!(f.send(A, &ack(5)), Verdict::Close, "finished");
    assert_eq!(f.hub.streams(), 0);
    assert!(f.records.streams.records().is_empty(), "cleaned up");
    assert_eq!(f.registry.get(1).unwrap().name(), "stream");
    assert_eq!(
        f.registry.get(1).unwrap().current(),
        105,
        "reserved from a sequence"
    );
}

#[test]
fn duplicate_reordered_and_out_of_range_acks_are_harmless() {
    let mut f = fixture();
    f.hub.open(A, None);
    f.send(A, &con(6, b"abc"));
    assert_eq!(f.tick(A).len(), 6);
    let mut acks = Vec::new();
    for position in [4, 1, 4, 1, 99, 6, u32::MAX, 3] {
        acks.extend(ack(position));
    }
    assert_eq!(f.send(A, &acks), Verdict::Open);
    f.advance(RESEND_AFTER);
    assert_eq!(
        f.tick(A),
        numbers(100, [0, 2, 5]),
        "the unacknowledged, in order"
    );
    for position in [0, 2, 5] {
        f.send(A, &ack(position));
    }
    assert_eq!(f.tick(A), vec![(6, u32::MAX)]);
}

#[test]
fn bytes_split_anywhere_mean_the_same() {
    let mut input = con(3, b"split");
    input.extend(ack(0));
    input.extend(ack(2));
    for cut in 0..input.len() {
        let mut f = fixture();
        f.hub.open(A, None);
        assert_eq!(f.send(A, &input[..cut]), Verdict::Open);
        assert_eq!(f.send(A, &input[cut..]), Verdict::Open);
        assert_eq!(
            f.tick(A),
            numbers(100, [1]),
            "split at {cut}: acknowledged skipped"
        );
        f.send(A, &ack(1));
        assert_eq!(f.tick(A), vec![(3, u32::MAX)]);
    }
}

#[test]
fn a_connection_closed_before_its_release_was_taken_is_not_released_again() {
    let mut f = fixture();
    f.hub.open(A, None);
    f.send(A, &con(4, b"id"));
    f.hub.open(B, None);
    f.send(B, &con(4, b"id"));
    // A closes on its own before the loop took the release; its key is then reused.
    f.hub.close(A, Now::current());
    f.hub.open(A, None);
    assert_eq!(
        f.hub.take_to_close(),
        Vec::<ConnKey>::new(),
        "the new connection in A's slot must not be closed"
    );
}

#[test]
fn a_resume_takes_the_stream_over_and_resends_what_was_not_acknowledged() {
    let mut f = fixture();
    f.hub.open(A, None);
    f.send(A, &con(4, b"id"));
    assert_eq!(f.tick(A).len(), 4);
    f.send(A, &ack(1));
    f.hub.open(B, None);
    assert_eq!(f.send(B, &con(4, b"id")), Verdict::Open);
    assert_eq!(f.hub.take_to_close(), vec![A], "never two writers");
    assert_eq!(
        f.tick(B),
        numbers(100, [0, 2, 3]),
        "the resend pass starts at once"
    );
    assert_eq!(
        f.send(A, &ack(0)),
        Verdict::Close,
        "the old connection is not heard"
    );
    f.hub.close(A, f.now);
    f.hub.close(B, f.now);
    // The progress is recorded when the connection goes.
    assert_eq!(f.records.streams.records()[0].acked, 0);
    f.hub.open(A, None);
    f.send(A, &con(4, b"id"));
    for position in 0..4 {
        f.send(A, &ack(position));
    }
    assert_eq!(f.tick(A), vec![(4, u32::MAX)]);
}

#[test]
fn nothing_is_sent_before_the_stream_is_durable() {
    let mut f = fixture_with(Registry::new(8, 100), Commits::persisted());
    f.hub.open(A, None);
    f.send(A, &con(2, b"id"));
    assert_eq!(f.tick(A), vec![]);
    assert!(f.records.commits.pending(), "its record waits for a write");
    f.records.commits.mark_durable(f.records.commits.last());
    assert_eq!(f.tick(A), numbers(100, 0..2));
}

#[test]
fn numbers_wait_for_a_durable_ceiling() {
    let registry = Registry::durable(8, 100);
    let mut f = fixture_with(registry, Commits::memory_only());
    f.hub.open(A, None);
    assert_eq!(f.send(A, &con(2, b"id")), Verdict::Open);
    assert_eq!(f.tick(A), vec![]);
    f.registry.get(1).unwrap().raise_ceiling(1000);
    assert_eq!(f.tick(A), numbers(100, 0..2));
}

#[test]
fn refused_cons_close_the_connection() {
    let mut f = fixture();
    for (count, id) in [(0, &b"a"[..]), (1001, b"a"), (1, b"")] {
        f.hub.open(A, None);
        assert_eq!(f.send(A, &con(count, id)), Verdict::Close, "n {count}");
    }
    f.hub.open(A, None);
    f.send(A, &con(3, b"a"));
    f.hub.open(B, None);
    assert_eq!(
        f.send(B, &con(4, b"a")),
        Verdict::Close,
        "n differs from the stream's"
    );
    f.send(B, &con(3, b"b"));
    f.hub.open(3, None);
    assert_eq!(f.send(3, &con(3, b"c")), Verdict::Close, "--max-streams");
    assert_eq!(f.hub.streams(), 2);
}

#[test]
fn numbers_that_would_not_fit_32_bits_are_refused() {
    let mut f = fixture_with(
        Registry::new(8, u64::from(u32::MAX) - 2),
        Commits::memory_only(),
    );
    f.hub.open(A, None);
    assert_eq!(f.send(A, &con(3, b"fits")), Verdict::Open);
    f.hub.open(B, None);
    assert_eq!(f.send(B, &con(1, b"too-far")), Verdict::Close);
    assert_eq!(f.hub.streams(), 1);
    assert_eq!(
        f.tick(A),
        vec![(0, u32::MAX - 2), (1, u32::MAX - 1), (2, u32::MAX)]
    );
}

#[test]
fn protocol_violations_close_the_connection() {
    let mut f = fixture();
    let mut number = Vec::new();
    Message::Number {
        sequence: 0,
        number: 1,
    }
    .encode(&mut number);
    let mut con_twice = con(1, b"x");
    con_twice.extend(con(1, b"x"));
    for input in [ack(0), number, b"GET".to_vec(), con_twice] {
        f.hub.open(A, None);
        assert_eq!(f.send(A, &input), Verdict::Close, "{input:?}");
        f.hub.close(A, f.now);
    }
}

#[test]
fn abandoned_streams_expire() {
    let mut f = fixture();
    f.hub.open(A, None);
    f.send(A, &con(2, b"gone"));
    f.hub.open(B, None);
    f.send(B, &con(2, b"here"));
    f.hub.close(A, f.now);
    f.advance(Duration::from_secs(30));
    f.send(B, &ack(0));
    f.advance(Duration::from_secs(31));
    f.tick(B);
    assert_eq!(
        f.hub.streams(),
        1,
        "only the one heard from within the TTL is left"
    );
    assert_eq!(f.records.streams.records()[0].client_id, b"here");
    f.advance(Duration::from_secs(60));
    f.tick(B);
    assert_eq!(f.hub.streams(), 0);
    assert_eq!(
        f.hub.take_to_close(),
        vec![B],
        "an expired stream's connection closes"
    );
}

#[test]
fn recovered_streams_resume_with_the_same_numbers() {
    let mut f = fixture();
    f.hub.open(A, None);
    f.send(A, &con(4, b"id"));
    f.tick(A);
    f.send(A, &ack(0));
    f.send(A, &ack(2));
    f.hub.close(A, f.now);
    // A restart: a new hub from the records.
    let mut hub = StreamHub::new(settings(), f.registry.clone(), f.records.clone(), f.now);
    hub.open(B, None);
    assert_eq!(hub.receive(B, &con(4, b"id"), f.now), Verdict::Open);
    let mut out = Vec::new();
    for key in hub.tick(f.now) {
        hub.fill(key, &mut out, f.now);
    }
    assert_eq!(
        sent(&out),
        numbers(100, [1, 2, 3]),
        "only the acked prefix survives"
    );
}

#[test]
fn ticks_are_asked_for_only_while_something_is_due() {
    let mut f = fixture();
    assert_eq!(f.hub.next_tick(f.now), None);
    f.hub.open(A, None);
    f.send(A, &con(2, b"id"));
    assert_eq!(f.hub.next_tick(f.now), Some(Duration::from_millis(1)));
    f.tick(A);
    assert_eq!(
        f.hub.next_tick(f.now),
        Some(RESEND_AFTER),
        "waiting for acks"
    );
    f.hub.close(A, f.now);
    assert_eq!(
        f.hub.next_tick(f.now),
        Some(EXPIRY_CHECK),
        "only expiry is left"
    );
}

#[test]
fn one_peer_holds_at_most_its_bound_and_gets_it_back() {
    let registry = Arc::new(Registry::new(8, 100));
    let records = Arc::new(LeasesAndStreams::empty(
        Commits::memory_only(),
        LeaseSettings::default(),
    ));
    let settings = StreamSettings {
        max_streams: 10,
        max_per_peer: 2,
        ..settings()
    };
    let mut f = Fixture {
        hub: StreamHub::new(settings, registry.clone(), records.clone(), fixture().now),
        registry,
        records,
        now: fixture().now,
    };
    let here: Option<std::net::IpAddr> = "127.0.0.1".parse().ok();
    let mapped: Option<std::net::IpAddr> = "::ffff:127.0.0.1".parse().ok();
    let there: Option<std::net::IpAddr> = "127.0.0.2".parse().ok();
    let before = counters::STREAMS_REFUSED_PER_PEER.load(Ordering::Relaxed);
    for (key, id) in [(1, b"a"), (2, b"b")] {
        f.hub.open(key, here);
        assert_eq!(f.send(key, &con(1, id)), Verdict::Open);
    }
    f.hub.open(3, mapped);
    assert_eq!(
        f.send(3, &con(1, b"c")),
        Verdict::Close,
        "the same peer over IPv6"
    );
    assert!(counters::STREAMS_REFUSED_PER_PEER.load(Ordering::Relaxed) > before);
    let reserved = f.registry.get(1).map(|s| s.current());
    f.hub.open(4, there);
    assert_eq!(f.send(4, &con(1, b"d")), Verdict::Open, "another peer");
    assert_eq!(
        f.registry.get(1).map(|s| s.current()),
        reserved.map(|n| n + 1),
        "the refused CON reserved nothing"
    );
    // A resume from the bounded peer is not a new stream: it is served.
    f.hub.close(1, f.now);
    f.hub.open(5, here);
    assert_eq!(f.send(5, &con(1, b"a")), Verdict::Open);
    // Stream "b" finishes: its peer may open another.
    assert_eq!(f.tick(2), vec![(0, 101)]);
    assert_eq!(f.send(2, &ack(0)), Verdict::Open);
    assert_eq!(f.tick(2), vec![(1, u32::MAX)]);
    assert_eq!(f.send(2, &ack(1)), Verdict::Close, "finished");
    f.hub.open(6, here);
    assert_eq!(f.send(6, &con(1, b"e")), Verdict::Open);
    f.hub.open(7, here);
    assert_eq!(f.send(7, &con(1, b"f")), Verdict::Close);
    // Expired streams give their places back too.
    f.advance(Duration::from_secs(61));
    f.tick(6);
    f.hub.open(8, here);
    assert_eq!(f.send(8, &con(1, b"f")), Verdict::Open);
}
