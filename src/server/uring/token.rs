//! Completion tokens: the user_data every submission carries, saying which operation of
//! which connection (or of the loop itself) a completion answers.
//!
//! Layout: `generation << 40 | key << 8 | op`. A connection's generation tells its
//! completions from those of an earlier connection in the same slot; operations that belong
//! to no connection (accept, timers, the wake-up read) have generation 0, which no connection
//! ever gets.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Key: which listener.
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// A cancellation request; its own completion carries nothing we need.
    Cancel = 4,
    Wake = 5,
    /// The refusal sent to a connection over the limit; the key is its descriptor.
    Refuse = 6,
    /// Key: which [`Timer`](crate::server::timers::Timer).
    Timer = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// Generations wrap within the token's 24 bits.
const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Token {
    /// An operation of the loop itself.
    pub fn of_loop(op: Op, key: usize) -> Token {
        Token::new(op, key, 0)
    }

    /// An operation of the connection in slot `key`.
    pub fn of_connection(op: Op, key: usize, generation: Generation) -> Token {
        Token::new(op, key, generation.0)
    }

    fn new(op: Op, key: usize, generation: u32) -> Token {
        debug_assert!(key <= u32::MAX as usize && generation <= GENERATION_MASK);
        Token(u64::from(generation) << 40 | (key as u64 & 0xffff_ffff) << 8 | op as u64)
    }

    pub fn from_user_data(user_data: u64) -> Token {
        Token(user_data)
    }

    pub fn user_data(self) -> u64 {
        self.0
    }

    pub fn op(self) -> Option<Op> {
        Some(match self.0 as u8 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Wake,
            6 => Op::Refuse,
            7 => Op::Timer,
            _ => return None,
        })
    }

    pub fn key(self) -> usize {
        ((self.0 >> 8) & 0xffff_ffff) as usize
    }

    /// Whether this token is for the connection of `generation` (false for a stale one,
    /// issued to an earlier connection in the same slot).
    pub fn is_for(self, generation: Generation) -> bool {
        (self.0 >> 40) as u32 == generation.0
    }
}

/// A connection's generation: never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u32);

/// Hands out generations, wrapping before the token's field overflows and skipping 0.
#[derive(Debug)]
pub struct Generations {
    next: u32,
}

impl Default for Generations {
    fn default() -> Generations {
        Generations { next: 1 }
    }
}

impl Generations {
    pub fn next(&mut self) -> Generation {
        let generation = self.next;
        self.next = (generation % GENERATION_MASK) + 1;
        Generation(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [Op; 7] = [
        Op::Accept,
        Op::Recv,
        Op::Send,
        Op::Cancel,
        Op::Wake,
        Op::Refuse,
        Op::Timer,
    ];

    #[test]
    fn op_key_and_generation_round_trip() {
        let mut generations = Generations::default();
        let generation = generations.next();
        for op in OPS {
            for key in [0, 1, 1023, u32::MAX as usize] {
                let token =
                    Token::from_user_data(Token::of_connection(op, key, generation).user_data());
                assert_eq!(token.op(), Some(op));
                assert_eq!(token.key(), key);
                assert!(token.is_for(generation));
                let of_loop = Token::of_loop(op, key);
                assert_eq!((of_loop.op(), of_loop.key()), (Some(op), key));
            }
        }
    }

    #[test]
    fn unknown_ops_are_not_decoded() {
        assert_eq!(Token::from_user_data(0).op(), None);
        assert_eq!(Token::from_user_data(8).op(), None);
    }

    #[test]
    fn generations_wrap_within_24_bits_and_never_yield_0() {
        let mut generations = Generations {
            next: GENERATION_MASK - 1,
        };
        let got: Vec<u32> = (0..4).map(|_| generations.next().0).collect();
        assert_eq!(got, [GENERATION_MASK - 1, GENERATION_MASK, 1, 2]);
        let mut generations = Generations::default();
        for _ in 0..(1 << 16) {
            let generation = generations.next();
            assert_ne!(generation.0, 0);
            assert!(generation.0 <= GENERATION_MASK);
        }
    }

    #[test]
    fn a_token_of_an_earlier_connection_in_the_slot_is_stale() {
        let mut generations = Generations::default();
        let first = generations.next();
        let second = generations.next();
        let token = Token::of_connection(Op::Recv, 5, first);
        assert!(token.is_for(first));
        assert!(
            !token.is_for(second),
            "the slot's next connection refuses it"
        );
        let loop_token = Token::of_loop(Op::Recv, 5);
        assert!(!loop_token.is_for(first), "no connection has generation 0");
    }
}
