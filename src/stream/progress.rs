//! One stream's progress as a pure state machine: which positions were acknowledged, which
//! pass it is in, and what it has to send next. No connection, no registry, no disk and no
//! log: the stream hub (`service::stream_hub`) reserves the numbers, keeps the record, encodes
//! what this says to send and logs.
//!
//! A stream of `count` positions carries the numbers `first..first + count` (position `i`
//! carries `first + i`). The server pushes at its own pace: a first pass over every position,
//! then passes over the unacknowledged ones (at most every [`RESEND_AFTER`]) until all are
//! acknowledged, then the checksum until that is acknowledged; then the stream is finished.

use std::time::{Duration, Instant};

use super::StreamRecord;
use crate::clock::Now;
use crate::sequence::SequenceId;

/// Least time between two passes over the unacknowledged positions of a stream, and between
/// two checksums: an acknowledgement has had time to come back.
pub const RESEND_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its numbers to be reserved (below the sequence's durable ceiling).
    Reserving,
    /// The first pass: `next` is the next position to send.
    First { next: u32 },
    /// A pass over unacknowledged positions, from `cursor`, not before `not_before`.
    Resend { cursor: u32, not_before: Instant },
    /// Every number is acknowledged: the checksum until it is.
    Checksum { not_before: Instant },
}

/// What a stream sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// The number at `position`.
    Number { position: u32, number: u32 },
    /// The checksum over every number (see [`StreamProgress::numbers`]); `count` is the
    /// position it is sent at.
    Checksum { count: u32 },
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// A position (new or repeated) was acknowledged.
    Position,
    /// Out of range, or the checksum acknowledged before it was sent: harmless, ignored.
    Ignored,
    /// The checksum was acknowledged: the stream is finished.
    Finished,
}

#[derive(Debug)]
pub struct StreamProgress {
    pub sequence: SequenceId,
    /// Position `i` carries `first + i`.
    first: u64,
    pub count: u32,
    acked: Vec<u64>,
    pub acked_count: u32,
    checksum_sent: bool,
    phase: Phase,
    /// Nothing is sent before this change (its record) is durable.
    pub change: u64,
    pub last_heard_ms: u64,
}

/// Whether `count` numbers from `first` all fit 32 bits (the stream protocol's numbers).
pub fn fits_32_bits(first: u64, count: u32) -> bool {
    count == 0 || first + u64::from(count) - 1 <= u64::from(u32::MAX)
}

impl StreamProgress {
    /// A new stream, waiting for its numbers.
    pub fn new(sequence: SequenceId, count: u32, now: Now) -> StreamProgress {
        StreamProgress {
            sequence,
            first: 0,
            count,
            acked: vec![0; (count as usize).div_ceil(64)],
            acked_count: 0,
            checksum_sent: false,
            phase: Phase::Reserving,
            change: 0,
            last_heard_ms: now.unix_ms,
        }
    }

    /// A stream recovered from its record: it resumes with a pass over what it had not seen
    /// acknowledged.
    pub fn restored(record: &StreamRecord, now: Now) -> StreamProgress {
        let mut stream = StreamProgress::new(record.sequence, record.count, now);
        stream.first = record.first;
        stream.last_heard_ms = record.last_active_ms;
        for position in 0..record.acked {
            stream.ack(position);
        }
        stream.phase = Phase::Resend {
            cursor: 0,
            not_before: now.at,
        };
        stream
    }

    /// Whether its numbers are still to be reserved.
    pub fn is_reserving(&self) -> bool {
        self.phase == Phase::Reserving
    }

    /// Its numbers were reserved from `first`: the first pass begins.
    pub fn reserved(&mut self, first: u64) {
        self.first = first;
        self.phase = Phase::First { next: 0 };
    }

    /// A client resumed the stream: a pass over what is unacknowledged begins now.
    pub fn resumed(&mut self, now: Now) {
        self.last_heard_ms = now.unix_ms;
        if !self.is_reserving() {
            self.phase = Phase::Resend {
                cursor: 0,
                not_before: now.at,
            };
        }
    }

    /// The numbers, in position order (what the checksum covers).
    pub fn numbers(&self) -> impl Iterator<Item = u32> + use<> {
        let first = self.first;
        // Within 32 bits: checked when the numbers were reserved.
        (0..self.count).map(move |i| (first + u64::from(i)) as u32)
    }

    fn is_acked(&self, position: u32) -> bool {
        self.acked[position as usize / 64] & (1 << (position % 64)) != 0
    }

    fn ack(&mut self, position: u32) {
        if !self.is_acked(position) {
            self.acked[position as usize / 64] |= 1 << (position % 64);
            self.acked_count += 1;
        }
    }

    /// The client acknowledged `position` (the count: the checksum).
    pub fn acknowledge(&mut self, position: u32, now: Now) -> Acked {
        self.last_heard_ms = now.unix_ms;
        if position < self.count {
            self.ack(position);
            if self.all_acked() && matches!(self.phase, Phase::Resend { .. }) {
                // The last one: the checksum goes out at once.
                self.phase = Phase::Checksum { not_before: now.at };
            }
            return Acked::Position;
        }
        if position > self.count || !self.checksum_sent || !self.all_acked() {
            return Acked::Ignored;
        }
        Acked::Finished
    }

    /// The first unacknowledged position at or after `from`, if any.
    fn next_unacked(&self, from: u32) -> Option<u32> {
        let mut word = from as usize / 64;
        let mut bits = !self.acked.get(word)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let position = (word * 64) as u32 + bits.trailing_zeros();
                return (position < self.count).then_some(position);
            }
            word += 1;
            bits = !*self.acked.get(word)?;
        }
    }

    fn all_acked(&self) -> bool {
        self.acked_count == self.count
    }

    /// Every position below this one is acknowledged.
    fn acked_prefix(&self) -> u32 {
        self.next_unacked(0).unwrap_or(self.count)
    }

    /// Its durable record.
    pub fn record(&self, client_id: &[u8]) -> StreamRecord {
        StreamRecord {
            client_id: client_id.to_vec(),
            sequence: self.sequence,
            first: self.first,
            count: self.count,
            acked: self.acked_prefix(),
            last_active_ms: self.last_heard_ms,
        }
    }

    /// When this stream next has something to send (None: waiting for the client).
    pub fn due(&self, now: Now) -> Option<Instant> {
        match self.phase {
            Phase::Reserving | Phase::First { .. } => Some(now.at),
            Phase::Resend { not_before, .. } | Phase::Checksum { not_before } => Some(not_before),
        }
    }

    /// What to send now, if anything, and the step taken. After a checksum nothing more is
    /// due until [`RESEND_AFTER`] has passed, so a caller sends at most one per call.
    pub fn next_send(&mut self, now: Now) -> Option<Send> {
        loop {
            match self.phase {
                Phase::Reserving => return None,
                Phase::First { next } => match self.next_unacked(next) {
                    Some(position) => {
                        self.phase = Phase::First { next: position + 1 };
                        return Some(self.number(position));
                    }
                    None => {
                        self.phase = Phase::Resend {
                            cursor: 0,
                            not_before: now.at + RESEND_AFTER,
                        }
                    }
                },
                Phase::Resend { .. } if self.all_acked() => {
                    self.phase = Phase::Checksum { not_before: now.at };
                }
                Phase::Resend { cursor, not_before } => {
                    if now.at < not_before {
                        return None;
                    }
                    match self.next_unacked(cursor) {
                        Some(position) => {
                            self.phase = Phase::Resend {
                                cursor: position + 1,
                                not_before,
                            };
                            return Some(self.number(position));
                        }
                        None => {
                            self.phase = Phase::Resend {
                                cursor: 0,
                                not_before: now.at + RESEND_AFTER,
                            }
                        }
                    }
                }
                Phase::Checksum { not_before } => {
                    if now.at < not_before {
                        return None;
                    }
                    self.checksum_sent = true;
                    self.phase = Phase::Checksum {
                        not_before: now.at + RESEND_AFTER,
                    };
                    return Some(Send::Checksum { count: self.count });
                }
            }
        }
    }

    fn number(&self, position: u32) -> Send {
        Send::Number {
            position,
            // Within 32 bits: checked when the numbers were reserved.
            number: (self.first + u64::from(position)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: Now, later: Duration) -> Now {
        Now {
            at: now.at + later,
            unix_ms: now.unix_ms + later.as_millis() as u64,
        }
    }

    fn sends(stream: &mut StreamProgress, now: Now) -> Vec<Send> {
        std::iter::from_fn(|| stream.next_send(now))
            .take(100)
            .collect()
    }

    #[test]
    fn first_pass_then_resends_of_the_unacknowledged_then_the_checksum() {
        let now = Now::current();
        let mut stream = StreamProgress::new(0, 3, now);
        assert_eq!(
            stream.next_send(now),
            None,
            "nothing before the reservation"
        );
        stream.reserved(100);
        let numbers = |s: &[Send]| -> Vec<u32> {
            s.iter()
                .filter_map(|s| match s {
                    Send::Number { number, .. } => Some(*number),
                    Send::Checksum { .. } => None,
                })
                .collect()
        };
        assert_eq!(numbers(&sends(&mut stream, now)), [100, 101, 102]);
        assert_eq!(stream.acknowledge(1, now), Acked::Position);
        assert!(
            sends(&mut stream, now).is_empty(),
            "not again before RESEND_AFTER"
        );
        let later = at(now, RESEND_AFTER);
        assert_eq!(numbers(&sends(&mut stream, later)), [100, 102]);
        assert_eq!(
            stream.acknowledge(3, later),
            Acked::Ignored,
            "checksum not sent"
        );
        stream.acknowledge(0, later);
        stream.acknowledge(2, later);
        assert_eq!(
            stream.next_send(later),
            Some(Send::Checksum { count: 3 }),
            "at once after the last acknowledgement"
        );
        assert_eq!(stream.next_send(later), None);
        assert_eq!(stream.acknowledge(4, later), Acked::Ignored, "out of range");
        assert_eq!(stream.acknowledge(3, later), Acked::Finished);
        assert_eq!(stream.numbers().collect::<Vec<_>>(), [100, 101, 102]);
    }

    #[test]
    fn a_restored_stream_resends_what_its_record_did_not_see_acknowledged() {
        let now = Now::current();
        let record = StreamRecord {
            client_id: b"c".to_vec(),
            sequence: 7,
            first: 10,
            count: 4,
            acked: 2,
            last_active_ms: 5,
        };
        let mut stream = StreamProgress::restored(&record, now);
        assert_eq!(stream.record(b"c"), record);
        let positions: Vec<u32> = sends(&mut stream, now)
            .into_iter()
            .filter_map(|s| match s {
                Send::Number { position, .. } => Some(position),
                Send::Checksum { .. } => None,
            })
            .collect();
        assert_eq!(positions, [2, 3]);
    }

    #[test]
    fn numbers_fit_32_bits_up_to_u32_max() {
        assert!(fits_32_bits(u64::from(u32::MAX), 1));
        assert!(!fits_32_bits(u64::from(u32::MAX), 2));
        assert!(fits_32_bits(1, 1000));
    }
}
