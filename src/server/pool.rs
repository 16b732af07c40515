//! Output buffers kept for reuse, so a busy connection does not allocate per turn, and
//! memory given back to the system once a burst is over.
//!
//! A pooled buffer is always empty: [`OutputPool::give`] clears what it is handed, so bytes
//! queued for one connection can never be handed to the next (a connection closed with
//! replies still queued gives its buffers back with those replies in them).
//!
//! The pool keeps few and small buffers (a bound on their count and on their bytes), so what
//! a burst of non-reading clients made it allocate is freed when they are gone. Freed is not
//! yet returned: glibc's allocator keeps freed memory for reuse, and it raises the size it
//! maps separately each time a large block is freed, so after one burst every later large
//! buffer comes from the heap, which it seldom shrinks. [`return_freed_memory`] fixes that
//! size (large buffers are mapped and unmapped on their own), and the pool asks glibc to
//! give back the heap's free pages after it has freed a lot.

/// Output buffers one event loop keeps for reuse, the largest one worth keeping, a new one's
/// size, and the most bytes the kept buffers may hold together.
const SPARE_BUFFERS: usize = 256;
const SPARE_BUFFER_MAX: usize = 64 << 10;
const FRESH_BUFFER: usize = 4096;
const SPARE_BYTES: usize = 4 << 20;

/// Allocations at least this large are mapped on their own, so freeing one unmaps it.
const MAP_SEPARATELY: usize = 256 << 10;
/// Heap bytes freed by a pool after which it asks glibc to return free heap pages.
const TRIM_AFTER: usize = 16 << 20;

/// Makes the allocator give large freed blocks back to the system at once (call before the
/// event loops start; glibc only, elsewhere the allocator decides).
pub(super) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; the value fits a c_int.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_SEPARATELY as libc::c_int);
    }
}

/// Asks the allocator to return the heap's free pages to the system.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
    /// Most bytes the kept buffers hold together, and what they hold now.
    budget: usize,
    kept_bytes: usize,
    /// Heap bytes freed since the heap was last trimmed.
    freed: usize,
}

impl OutputPool {
    /// The pool of one event loop.
    pub fn for_event_loop() -> OutputPool {
        OutputPool::new(SPARE_BUFFERS, SPARE_BUFFER_MAX, FRESH_BUFFER, SPARE_BYTES)
    }

    pub fn new(keep: usize, largest: usize, fresh: usize, budget: usize) -> OutputPool {
        OutputPool {
            spare: Vec::with_capacity(keep),
            keep,
            largest,
            fresh,
            budget,
            kept_bytes: 0,
            freed: 0,
        }
    }

    /// An empty buffer, reused when one is spare.
    pub fn take(&mut self) -> Vec<u8> {
        let Some(buffer) = self.spare.pop() else {
            return Vec::with_capacity(self.fresh);
        };
        self.kept_bytes -= buffer.capacity();
        debug_assert!(buffer.is_empty());
        buffer
    }

    /// Takes `buffer` back, emptied; frees it instead when it holds no memory, is too large
    /// to keep or the pool is full.
    pub fn give(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        let capacity = buffer.capacity();
        if capacity == 0 {
            return;
        }
        if capacity <= self.largest
            && self.spare.len() < self.keep
            && self.kept_bytes + capacity <= self.budget
        {
            self.kept_bytes += capacity;
            self.spare.push(buffer);
            return;
        }
        drop(buffer);
        if capacity < MAP_SEPARATELY {
            // Freed into the heap (a mapped block is unmapped by the free itself).
            self.freed += capacity;
            if self.freed >= TRIM_AFTER {
                self.freed = 0;
                trim_heap();
            }
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
        let mut pool = OutputPool::new(4, 1 << 20, 16, 1 << 20);
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
        let mut pool = OutputPool::new(2, 64, 16, 1 << 20);
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
    fn keeps_no_more_bytes_than_its_budget() {
        let mut pool = OutputPool::new(8, 64, 16, 100);
        for _ in 0..4 {
            pool.give(Vec::with_capacity(40));
        }
        assert_eq!(pool.len(), 2, "two of 40 bytes fit a budget of 100");
        let _ = pool.take();
        pool.give(Vec::with_capacity(40));
        assert_eq!(pool.len(), 2, "a buffer taken out makes room for one");
    }

    #[test]
    fn an_empty_pool_makes_a_fresh_buffer() {
        let mut pool = OutputPool::new(2, 64, 16, 1 << 20);
        let buffer = pool.take();
        assert!(buffer.is_empty());
        assert!(buffer.capacity() >= 16);
    }
}
