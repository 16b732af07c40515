//! Output buffers kept for reuse, so a busy connection does not allocate per turn.
//!
//! A pooled buffer is always empty: [`OutputPool::give`] clears what it is handed, so bytes
//! queued for one connection can never be handed to the next (a connection closed with
//! replies still queued gives its buffers back with those replies in them).

/// A bounded stack of empty buffers.
#[derive(Debug)]
pub(super) struct OutputPool {
    spare: Vec<Vec<u8>>,
    /// Buffers kept at most.
    keep: usize,
    /// Largest capacity worth keeping; a bigger buffer is freed instead.
    largest: usize,
    /// Capacity of a buffer made when the pool is empty.
    fresh: usize,
}

impl OutputPool {
    pub fn new(keep: usize, largest: usize, fresh: usize) -> OutputPool {
        OutputPool {
            spare: Vec::with_capacity(keep),
            keep,
            largest,
            fresh,
        }
    }

    /// An empty buffer, reused when one is spare.
    pub fn take(&mut self) -> Vec<u8> {
        let buffer = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.fresh));
        debug_assert!(buffer.is_empty());
        buffer
    }

    /// Takes `buffer` back, emptied; frees it instead when it holds no memory, is too large
    /// to keep or the pool is full.
    pub fn give(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        if buffer.capacity() > 0
            && buffer.capacity() <= self.largest
            && self.spare.len() < self.keep
        {
            self.spare.push(buffer);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.spare.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_with_bytes_comes_out_empty() {
        let mut pool = OutputPool::new(4, 1 << 20, 16);
        let mut buffer = pool.take();
        buffer.extend_from_slice(b"replies queued for a connection that then closed");
        let capacity = buffer.capacity();
        pool.give(buffer);
        let reused = pool.take();
        assert!(reused.is_empty());
        assert_eq!(reused.capacity(), capacity, "the memory is reused");
    }

    #[test]
    fn keeps_at_most_its_bound_and_no_oversized_or_empty_buffers() {
        let mut pool = OutputPool::new(2, 64, 16);
        pool.give(Vec::new());
        assert_eq!(
            pool.len(),
            0,
            "a buffer without memory is not worth keeping"
        );
        pool.give(Vec::with_capacity(65));
        assert_eq!(pool.len(), 0, "too large to keep");
        for _ in 0..3 {
            pool.give(Vec::with_capacity(32));
        }
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn an_empty_pool_makes_a_fresh_buffer() {
        let mut pool = OutputPool::new(2, 64, 16);
        let buffer = pool.take();
        assert!(buffer.is_empty());
        assert!(buffer.capacity() >= 16);
    }
}
