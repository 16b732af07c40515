//! The service end to end: sessions fed bytes, replies read back.

use super::*;
use crate::protocol::binary::{decode_reply, encode_open, encode_request, opcode};
use crate::protocol::{self, Problem, binary};
use crate::sequence::Registry;
use crate::state::LeasesAndStreams;
use std::sync::Arc;

fn records(commits: crate::commits::Commits) -> Arc<LeasesAndStreams> {
    Arc::new(LeasesAndStreams::empty(
        commits,
        crate::lease::LeaseSettings {
            timeout: std::time::Duration::from_secs(30),
            max_size: 1000,
            max_per_client: 4,
            max_tracked: 100,
            max_per_peer: 0,
            reuse: false,
        },
    ))
}

fn loop_state(registry: Arc<Registry>, max_batch: u64) -> LoopState {
    let commits = match registry.is_durable() {
        true => crate::commits::Commits::persisted(),
        false => crate::commits::Commits::memory_only(),
    };
    LoopState::with_records(
        registry,
        records(commits),
        Limits {
            max_batch,
            password: None,
            held_output: crate::service::OUTPUT_HIGH_WATER,
        },
    )
}

fn state(initial: u64) -> LoopState {
    loop_state(Arc::new(Registry::new(8, initial)), 1_000_000)
}

fn text_exchange(session: &mut Session, state: &mut LoopState, input: &[u8]) -> (String, Status) {
    let mut out = Vec::new();
    let status = session.receive(input, state, &mut out);
    (String::from_utf8(out).unwrap(), status)
}

fn binary_replies(out: &[u8]) -> Vec<(u8, u8, u32, u64)> {
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        let ok = decode_reply(&out[pos..]).unwrap();
        let r = ok.message;
        replies.push((r.opcode, r.status, r.count, r.value));
        pos += ok.consumed;
    }
    replies
}

#[test]
fn text_protocol_transcript() {
    let mut st = state(1);
    let mut s = Session::new();
    let input = b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\nCURRENT\r\nGETSEQ\r\n";
    let (out, status) = text_exchange(&mut s, &mut st, input);
    assert_eq!(out, ":1\r\n:2\r\n:3\r\n:4\r\n:4\r\n:4\r\n");
    assert_eq!(status, Status::Open);
}

#[test]
fn text_split_at_every_byte_gives_the_same_replies() {
    let input = b"GETSEQ\r\n*1\r\n$6\r\nGETSEQ\r\nGETSEQ_BATCH 3 x\nCURRENT x\r\nPING\r\n*2\r\n$7\r\nCURRENT\r\n$1\r\nx\r\n";
    let expected = ":1\r\n:2\r\n*2\r\n:1\r\n:3\r\n:4\r\n+PONG\r\n:4\r\n";
    for cut in 0..input.len() {
        let mut st = state(1);
        let mut s = Session::new();
        let mut out = Vec::new();
        s.receive(&input[..cut], &mut st, &mut out);
        s.receive(&input[cut..], &mut st, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {cut}");
        assert_eq!(s.buffered(), 0);
    }
}

#[test]
fn binary_split_at_every_byte_gives_the_same_replies() {
    let mut input = Vec::new();
    encode_request(&mut input, opcode::GETSEQ, 0, 0);
    encode_open(&mut input, b"orders");
    encode_request(&mut input, opcode::GETSEQ_BATCH, 1, 10);
    encode_request(&mut input, opcode::GETSEQ, 0, 0);
    encode_request(&mut input, opcode::CURRENT, 1, 0);
    let expected = vec![
        (opcode::GETSEQ, 0, 1, 5),
        (opcode::OPEN, 0, 0, 1),
        (opcode::GETSEQ_BATCH, 0, 10, 5),
        (opcode::GETSEQ, 0, 1, 6),
        (opcode::CURRENT, 0, 0, 15),
    ];
    for cut in 0..input.len() {
        let mut st = state(5);
        let mut s = Session::new();
        let mut out = Vec::new();
        s.receive(&input[..cut], &mut st, &mut out);
        s.receive(&input[cut..], &mut st, &mut out);
        assert_eq!(binary_replies(&out), expected, "split at {cut}");
    }
}

#[test]
fn repeated_frames_are_counted_without_changing_replies() {
    // Runs of identical frames (the fast path), broken by different ones, split anywhere.
    let mut input = b"GETSEQ\r\n".repeat(5);
    input.extend_from_slice(&b"GETSEQ_BATCH 2\r\n".repeat(3));
    input.extend_from_slice(&b"GETSEQ x\r\n".repeat(4));
    input.extend_from_slice(b"CURRENT\r\n");
    input.extend_from_slice(&b"GETSEQ\r\n".repeat(3));
    // Telnet's line end for piped CRLF text (CR NUL CR LF): the same request, another frame.
    input.extend_from_slice(&b"GETSEQ\r\0\r\n".repeat(3));
    input.extend_from_slice(b"CURRENT\r\0\r\n");
    let mut expected = String::new();
    for n in 1..=5 {
        expected += &format!(":{n}\r\n");
    }
    for first in [6, 8, 10] {
        expected += &format!("*2\r\n:{first}\r\n:{}\r\n", first + 1);
    }
    for n in 1..=4 {
        expected += &format!(":{n}\r\n");
    }
    expected += ":12\r\n:12\r\n:13\r\n:14\r\n:15\r\n:16\r\n:17\r\n:18\r\n";
    for cut in 0..input.len() {
        let mut st = state(1);
        let mut s = Session::new();
        let mut out = Vec::new();
        s.receive(&input[..cut], &mut st, &mut out);
        s.receive(&input[cut..], &mut st, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {cut}");
    }
}

#[test]
fn a_run_is_served_by_one_reservation_in_order() {
    let mut st = state(1);
    let mut s = Session::new();
    let (out, _) = text_exchange(
        &mut s,
        &mut st,
        b"GETSEQ\nGETSEQ_BATCH 5\nGETSEQ\nCURRENT\nGETSEQ\n",
    );
    assert_eq!(out, ":1\r\n*2\r\n:2\r\n:6\r\n:7\r\n:8\r\n:8\r\n");
}

#[test]
fn errors_do_not_close_and_consume_nothing() {
    let mut st = state(1);
    let mut s = Session::new();
    let (out, status) = text_exchange(
        &mut s,
        &mut st,
        b"FOOBAR\r\nGETSEQ_BATCH 0\r\nGETSEQ_BATCH 1000001\r\nGETSEQ\r\n",
    );
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(
        lines[0],
        format!(
            "-ERR Unknown command 'FOOBAR'. Supported: {}",
            protocol::TEXT_COMMANDS
        )
    );
    assert_eq!(
        lines[1],
        "-ERR batch size must be between 1 and 1000000 (--max-batch)"
    );
    assert_eq!(lines[2], lines[1]);
    assert_eq!(lines[3], ":1");
    assert_eq!(status, Status::Open);
}

#[test]
fn unknown_protocol_byte_is_refused_and_closed() {
    let mut st = state(1);
    let mut s = Session::new();
    let (out, status) = text_exchange(&mut s, &mut st, b"\x16\x03\x01");
    assert!(
        out.starts_with("-ERR unknown protocol: first byte 0x16"),
        "{out}"
    );
    assert_eq!(status, Status::Closing);
    assert_eq!(
        text_exchange(&mut s, &mut st, b"GETSEQ\r\n"),
        (String::new(), Status::Closing)
    );
}

#[test]
fn fatal_frame_answers_what_came_before_then_closes() {
    let mut st = state(1);
    let mut s = Session::new();
    let mut input = Vec::new();
    encode_request(&mut input, opcode::GETSEQ, 0, 0);
    input.extend_from_slice(&[0x9e, 0x07, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    encode_request(&mut input, opcode::GETSEQ, 0, 0);
    let mut out = Vec::new();
    assert_eq!(s.receive(&input, &mut st, &mut out), Status::Closing);
    let replies = binary_replies(&out);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], (opcode::GETSEQ, 0, 1, 1));
    assert_eq!(replies[1].1, protocol::ErrorCode::Fatal as u8);
    assert_eq!(
        st.registry().get(0).unwrap().current(),
        2,
        "nothing after the bad frame ran"
    );
}

#[test]
fn overlong_text_line_is_fatal() {
    let mut st = state(1);
    let mut s = Session::new();
    let chunk = vec![b'a'; 16 * 1024];
    let mut out = Vec::new();
    let mut status = Status::Open;
    for _ in 0..5 {
        status = s.receive(&chunk, &mut st, &mut out);
    }
    assert_eq!(status, Status::Closing);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("-ERR request longer than 65536 bytes")
    );
}

#[test]
fn quit_answers_ok_and_closes() {
    let mut st = state(1);
    let mut s = Session::new();
    let (out, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\nQUIT\r\nGETSEQ\r\n");
    assert_eq!(out, ":1\r\n+OK\r\n");
    assert_eq!(status, Status::Closing);
}

#[test]
fn exhaustion_serves_what_is_left_then_refuses() {
    let mut st = state(crate::sequence::MAX_VALUE - 1);
    let mut s = Session::new();
    let (out, _) = text_exchange(
        &mut s,
        &mut st,
        b"GETSEQ\r\nGETSEQ_BATCH 5\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\n",
    );
    let max = crate::sequence::MAX_VALUE;
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], format!(":{}", max - 1));
    assert!(
        lines[1].starts_with("-EXHAUSTED sequence exhausted: only 1 numbers are left"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], format!(":{max}"));
    assert!(lines[3].starts_with("-EXHAUSTED"));
    assert_eq!(lines[4], format!(":{}", max + 1));
}

#[test]
fn binary_unknown_sequence_id_is_an_error() {
    let mut st = state(1);
    let mut s = Session::new();
    let mut input = Vec::new();
    encode_request(&mut input, opcode::GETSEQ, 7, 0);
    let mut out = Vec::new();
    assert_eq!(s.receive(&input, &mut st, &mut out), Status::Open);
    let replies = binary_replies(&out);
    assert_eq!(
        replies,
        vec![(
            opcode::GETSEQ,
            protocol::ErrorCode::UnknownSequence as u8,
            0,
            7
        )]
    );
}

#[test]
fn a_run_beyond_the_ceiling_waits_with_later_input_until_resumed() {
    let registry = Arc::new(Registry::durable(8, 1));
    registry.get(0).unwrap().raise_ceiling(3); // 1 and 2 may be issued
    let mut st = loop_state(registry.clone(), 10);
    let mut s = Session::new();
    let (out, status) = text_exchange(
        &mut s,
        &mut st,
        b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nCURRENT\r\nGET",
    );
    assert_eq!(out, "", "the whole run waits: replies stay in order");
    assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(0)));
    assert_eq!(
        registry.get(0).unwrap().demand(),
        4,
        "the server learns what is wanted"
    );
    // Input that arrives while paused is held, not decoded.
    let (out, status) = text_exchange(&mut s, &mut st, b"SEQ\r\n");
    assert_eq!(
        (out.as_str(), status),
        ("", Status::Paused(Pause::AwaitingCeiling(0)))
    );
    // Still not enough: it keeps waiting.
    let mut out = Vec::new();
    assert_eq!(
        s.resume(&mut st, &mut out),
        Status::Paused(Pause::AwaitingCeiling(0))
    );
    assert!(out.is_empty());
    registry.get(0).unwrap().raise_ceiling(100);
    assert_eq!(s.resume(&mut st, &mut out), Status::Open);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        ":1\r\n:2\r\n:3\r\n:4\r\n:4\r\n"
    );
    assert_eq!(s.buffered(), 0);
}

#[test]
fn a_waiting_run_asks_for_a_raise() {
    let registry = Arc::new(Registry::durable(8, 1));
    let mut st = loop_state(registry.clone(), 10);
    let mut s = Session::new();
    let (_, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\n");
    assert_eq!(status, Status::Paused(Pause::AwaitingCeiling(0)));
    assert!(
        registry
            .persister_signals()
            .wait_for_write_request(std::time::Duration::ZERO),
        "the persister was asked for a raise"
    );
}

#[test]
fn unavailable_ceilings_refuse_what_they_do_not_cover_and_keep_serving() {
    let registry = Arc::new(Registry::durable(8, 1));
    registry.get(0).unwrap().raise_ceiling(3); // 1 and 2 are durable
    registry.persister_signals().set_unavailable(true);
    let mut st = loop_state(registry.clone(), 10);
    let mut s = Session::new();
    let (out, status) = text_exchange(
        &mut s,
        &mut st,
        b"GETSEQ\r\nGETSEQ\r\nGETSEQ\r\nGETSEQ_BATCH 2\r\nCURRENT\r\nPING\r\n",
    );
    let refused = format!("-UNAVAILABLE {}", Problem::Unavailable);
    assert_eq!(
        out,
        format!(":1\r\n:2\r\n{refused}\r\n{refused}\r\n:3\r\n+PONG\r\n")
    );
    assert_eq!(status, Status::Open);
    assert_eq!(registry.persister_signals().take_refusals(), 2);
    // The disk works again: the next request is served from the raised ceiling.
    registry.get(0).unwrap().raise_ceiling(100);
    registry.persister_signals().set_unavailable(false);
    let (out, _) = text_exchange(&mut s, &mut st, b"GETSEQ\r\n");
    assert_eq!(out, ":3\r\n");
}

#[test]
fn a_waiting_run_is_refused_when_ceilings_become_unavailable() {
    let registry = Arc::new(Registry::durable(8, 1));
    let mut st = loop_state(registry.clone(), 10);
    let mut s = Session::new();
    let (out, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\nGETSEQ\r\nPING\r\n");
    assert_eq!(
        (out.as_str(), status),
        ("", Status::Paused(Pause::AwaitingCeiling(0)))
    );
    registry.persister_signals().set_unavailable(true);
    let mut out = Vec::new();
    assert_eq!(s.resume(&mut st, &mut out), Status::Open);
    let refused = format!("-UNAVAILABLE {}", Problem::Unavailable);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{refused}\r\n{refused}\r\n+PONG\r\n")
    );
    assert_eq!(registry.get(0).unwrap().current(), 1, "nothing consumed");
}

#[test]
fn lease_protocol_lease_and_ack() {
    let mut st = state(1001);
    let mut s = Session::new();
    let (out, status) = text_exchange(
        &mut s,
        &mut st,
        b"GET_SEQUENCE_RANGE 20\r\nACK 1001,1020\r\nGETSEQ\r\nLEASES\r\n",
    );
    assert_eq!(
        out,
        "1001,1020\r\n+OK\r\n:1021\r\n+outstanding=0 granted=1 acknowledged=1 \
         retired=0 returned=0 reused=0\r\n"
    );
    assert_eq!(status, Status::Open);
    let (out, _) = text_exchange(&mut s, &mut st, b"ACK 1001,1019\r\nACK 5,6\r\n");
    assert!(
        out.starts_with("-NOLEASE no lease has the range 1001,1019"),
        "{out}"
    );
    assert!(
        out.contains("\r\n-NOLEASE no lease has the range 5,6"),
        "{out}"
    );
}

#[test]
fn a_lease_reply_and_later_requests_wait_until_the_lease_is_durable() {
    let registry = Arc::new(Registry::durable(8, 1));
    registry.get(0).unwrap().raise_ceiling(1000);
    let mut st = loop_state(registry.clone(), 100);
    let mut s = Session::new();
    let (out, status) = text_exchange(
        &mut s,
        &mut st,
        b"GETSEQ\r\nGET_SEQUENCE_RANGE 5 c r\r\nGETSEQ\r\n",
    );
    assert_eq!(out, ":1\r\n", "the reply before the lease goes out at once");
    let Status::Paused(Pause::AwaitingDurable(change)) = status else {
        panic!("{status:?}");
    };
    assert!(
        registry
            .persister_signals()
            .wait_for_write_request(std::time::Duration::ZERO),
        "the persister was asked for a write"
    );
    let mut out = Vec::new();
    assert_eq!(s.resume(&mut st, &mut out), status, "not durable yet");
    assert!(out.is_empty());
    st.records.commits.mark_durable(change);
    assert_eq!(s.resume(&mut st, &mut out), Status::Open);
    assert_eq!(String::from_utf8(out).unwrap(), "2,6\r\n:7\r\n");
    // A retry is answered with the same range, at once now that it is durable.
    let (out, _) = text_exchange(&mut s, &mut st, b"GET_SEQUENCE_RANGE 5 c r\r\n");
    assert_eq!(out, "2,6\r\n");
    // The disk fails: the acknowledgement is refused rather than left waiting.
    registry.persister_signals().set_unavailable(true);
    let (out, status) = text_exchange(&mut s, &mut st, b"ACK 2,6\r\nPING\r\n");
    assert!(
        out.starts_with("-UNAVAILABLE the lease could not be recorded"),
        "{out}"
    );
    assert!(out.ends_with("+PONG\r\n"));
    assert_eq!(status, Status::Open);
}

#[test]
fn a_last_line_without_line_ending_is_discarded_at_end_of_input() {
    let mut st = state(1001);
    let mut s = Session::new();
    // `GETSEQ_BATCH 1` may be the start of `GETSEQ_BATCH 10`; Redis drops it too.
    let (out, status) = text_exchange(&mut s, &mut st, b"GETSEQ\r\nGETSEQ_BATCH 1");
    assert_eq!((out.as_str(), status), (":1001\r\n", Status::Open));
    assert_eq!(s.end_of_input(), Status::Open);
    assert_eq!(
        st.registry().get(0).unwrap().current(),
        1002,
        "not executed"
    );
    assert_eq!(st.records.leases.stats().totals.granted, 0);
    // A binary session's partial frame is dropped the same way.
    let mut s = Session::new();
    let mut out = Vec::new();
    s.receive(&[binary::MAGIC, 1, 1], &mut st, &mut out);
    assert_eq!(s.end_of_input(), Status::Open);
    assert!(out.is_empty());
}

#[test]
fn backpressure_holds_input_until_output_drains() {
    let mut st = state(1);
    let mut s = Session::new();
    let mut out = vec![0u8; OUTPUT_HIGH_WATER];
    assert_eq!(
        s.receive(b"GETSEQ\r\n", &mut st, &mut out),
        Status::Paused(Pause::Backpressure)
    );
    assert_eq!(out.len(), OUTPUT_HIGH_WATER);
    assert_eq!(s.buffered(), 8);
    out.clear();
    assert_eq!(s.resume(&mut st, &mut out), Status::Open);
    assert_eq!(out, b":1\r\n");
}

#[test]
fn a_large_resp_array_one_byte_per_receive_costs_linear_work() {
    let mut st = state(1);
    let mut input = b"*1024\r\n$12\r\nGETSEQ_BATCH\r\n".to_vec();
    for _ in 1..1024 {
        input.extend_from_slice(b"$5\r\nabcde\r\n");
    }
    input.extend_from_slice(b"*1\r\n$6\r\nGETSEQ\r\n");
    let mut s = Session::new();
    let mut out = Vec::new();
    for byte in input.chunks(1) {
        assert_eq!(s.receive(byte, &mut st, &mut out), Status::Open);
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "-ERR wrong number of arguments: usage: GETSEQ_BATCH count [sequence]\r\n:1\r\n"
    );
    let examined = s.examined();
    assert!(
        examined <= 2 * input.len() as u64,
        "{examined} bytes examined for {} received",
        input.len()
    );
    assert_eq!(s.buffered(), 0);
}

#[test]
fn a_fatal_binary_error_carries_the_opcode_of_its_frame() {
    let mut st = state(1);
    let mut s = Session::new();
    let mut out = Vec::new();
    // OPEN declaring a 65-byte name: the stream cannot be trusted past it.
    encode_request(&mut out, opcode::GETSEQ, 0, 0);
    let mut input = std::mem::take(&mut out);
    encode_request(&mut input, opcode::OPEN, 0, 65);
    assert_eq!(s.receive(&input, &mut st, &mut out), Status::Closing);
    let replies = binary_replies(&out);
    assert_eq!(replies[0], (opcode::GETSEQ, 0, 1, 1));
    assert_eq!(
        (replies[1].0, replies[1].1),
        (opcode::OPEN, protocol::ErrorCode::Fatal as u8)
    );
    // The same split across receives.
    let mut s = Session::new();
    let mut out = Vec::new();
    let mut auth = Vec::new();
    encode_request(&mut auth, opcode::AUTH, 0, 513);
    s.receive(&auth[..5], &mut st, &mut out);
    assert_eq!(s.receive(&auth[5..], &mut st, &mut out), Status::Closing);
    assert_eq!(binary_replies(&out)[0].0, opcode::AUTH);
    // A frame whose magic or version is wrong has no opcode that can be trusted: 0.
    let mut s = Session::new();
    let mut out = Vec::new();
    let v2 = [
        binary::MAGIC,
        2,
        opcode::GETSEQ,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    assert_eq!(s.receive(&v2, &mut st, &mut out), Status::Closing);
    assert_eq!(binary_replies(&out)[0].0, 0);
}
