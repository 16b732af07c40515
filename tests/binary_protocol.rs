//! The binary protocol against the real binary, through `seqd::client` and raw frames.

use std::io::Write;

use seqd::client::{ClientError, Request, Response};
use seqd::protocol::ErrorCode;
use seqd::protocol::binary::{FRAME_LEN, decode_reply, encode_request, opcode};
use seqd_test_support::{SeqdProcess, exchange, read_exactly, read_to_close};

#[test]
fn client_get_batch_current_ping_open() {
    let server = SeqdProcess::start(&["--initial=100"]);
    let mut client = server.client();
    assert_eq!(client.get().unwrap(), 100);
    assert_eq!(client.get().unwrap(), 101);
    assert_eq!(client.get_batch(10).unwrap(), 102..112);
    assert_eq!(client.current().unwrap(), 112);
    client.ping().unwrap();
    let orders = client.open("orders").unwrap();
    assert_ne!(orders, 0);
    assert_eq!(client.open("orders").unwrap(), orders, "OPEN is idempotent");
    assert_eq!(client.get_from(orders).unwrap(), 100);
    assert_eq!(client.current_of(orders).unwrap(), 101);
    assert_eq!(client.get().unwrap(), 112, "sequences are independent");
}

#[test]
fn pipelined_replies_come_in_order() {
    let server = SeqdProcess::start(&[]);
    let mut client = server.client();
    let requests = [
        Request::Get(0),
        Request::GetBatch(0, 5),
        Request::Current(0),
        Request::Ping,
        Request::Get(0),
        Request::GetBatch(0, 0),
        Request::Get(0),
    ];
    let replies = client.pipeline(&requests).unwrap();
    assert_eq!(replies[0].as_ref().unwrap(), &Response::Number(1));
    assert_eq!(replies[1].as_ref().unwrap(), &Response::Range(2..7));
    assert_eq!(replies[2].as_ref().unwrap(), &Response::Current(7));
    assert_eq!(replies[3].as_ref().unwrap(), &Response::Pong);
    assert_eq!(replies[4].as_ref().unwrap(), &Response::Number(7));
    match &replies[5] {
        Err(ClientError::Server {
            code: ErrorCode::OutOfRange,
            detail: 1_000_000,
            message,
        }) => {
            assert_eq!(
                message,
                "batch size must be between 1 and 1000000 (--max-batch)"
            )
        }
        other => panic!("expected an out-of-range error, got {other:?}"),
    }
    assert_eq!(
        replies[6].as_ref().unwrap(),
        &Response::Number(8),
        "the error consumed nothing"
    );
}

#[test]
fn recoverable_errors_keep_the_connection() {
    let server = SeqdProcess::start(&[]);
    let mut client = server.client();
    match client.get_from(42) {
        Err(ClientError::Server {
            code: ErrorCode::UnknownSequence,
            detail: 42,
            ..
        }) => {}
        other => panic!("expected unknown sequence, got {other:?}"),
    }
    // An unknown opcode in a well-formed frame.
    let mut conn = server.connect();
    let mut frame = Vec::new();
    encode_request(&mut frame, 0x7f, 0, 0);
    encode_request(&mut frame, opcode::GETSEQ, 0, 0);
    conn.write_all(&frame).unwrap();
    let error = read_exactly(&mut conn, FRAME_LEN);
    let header = decode_reply(&error).unwrap_err();
    // The error header announces a message; read it and then the next reply.
    let seqd::protocol::ParseError::Incomplete(seqd::protocol::Need::Bytes(message_len)) = header
    else {
        panic!("error reply without message: {header:?}");
    };
    let mut reply = error;
    reply.extend(read_exactly(&mut conn, message_len));
    let parsed = decode_reply(&reply).unwrap().message;
    assert_eq!(parsed.status, ErrorCode::BadRequest as u8);
    assert_eq!(
        String::from_utf8_lossy(parsed.message),
        "unknown opcode 0x7f"
    );
    let next = read_exactly(&mut conn, FRAME_LEN);
    assert_eq!(decode_reply(&next).unwrap().message.value, 1);
    assert_eq!(client.get().unwrap(), 2);
}

#[test]
fn malformed_frames_get_an_error_then_close() {
    let server = SeqdProcess::start(&[]);
    for (bad, expected) in [
        (
            vec![0x9e, 0x02, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "unsupported binary protocol version 2",
        ),
        (
            vec![0x9e, 0x01, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "malformed request: OPEN name longer than 64 bytes",
        ),
    ] {
        let mut conn = server.connect();
        let mut frames = Vec::new();
        encode_request(&mut frames, opcode::GETSEQ, 0, 0);
        frames.extend_from_slice(&bad);
        conn.write_all(&frames).unwrap();
        let got = read_to_close(&mut conn);
        let first = decode_reply(&got).unwrap();
        assert_eq!(
            first.message.status, 0,
            "the frame before the bad one is answered"
        );
        let error = decode_reply(&got[first.consumed..]).unwrap();
        assert_eq!(error.message.status, ErrorCode::Fatal as u8);
        let text = String::from_utf8_lossy(error.message.message);
        assert!(text.starts_with(expected), "{text}");
        assert_eq!(
            first.consumed + error.consumed,
            got.len(),
            "nothing after the error"
        );
    }
    // Out of step: a frame whose magic byte is wrong.
    let mut conn = server.connect();
    let mut frames = Vec::new();
    encode_request(&mut frames, opcode::GETSEQ, 0, 0);
    frames.extend_from_slice(&[0x9e; 3]); // a stray partial frame shifts everything after it
    encode_request(&mut frames, opcode::GETSEQ, 0, 0);
    encode_request(&mut frames, opcode::GETSEQ, 0, 0);
    conn.write_all(&frames).unwrap();
    let got = read_to_close(&mut conn);
    let first = decode_reply(&got).unwrap();
    let error = decode_reply(&got[first.consumed..]).unwrap().message;
    assert_eq!(error.status, ErrorCode::Fatal as u8);
}

#[test]
fn a_stranger_is_refused_but_others_keep_being_served() {
    let server = SeqdProcess::start(&[]);
    let mut client = server.client();
    assert_eq!(client.get().unwrap(), 1);
    let mut stranger = server.connect();
    stranger.write_all(b"\x00\x01\x02").unwrap();
    assert!(
        String::from_utf8(read_to_close(&mut stranger))
            .unwrap()
            .starts_with("-ERR unknown protocol")
    );
    assert_eq!(client.get().unwrap(), 2);
}

#[test]
fn raw_frames_from_the_protocol_document() {
    let server = SeqdProcess::start(&[]);
    let mut conn = server.connect();
    let get = [0x9e, 0x01, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let reply = exchange(&mut conn, &get, 16);
    assert_eq!(
        reply,
        [0x9e, 0x01, 0x01, 0x00, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    );
}
