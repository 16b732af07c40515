//! A provided-buffer ring: receive buffers the kernel picks from when a multishot recv
//! completes, so a connection owns no receive buffer while it is idle.
//!
//! Written against the raw ring layout (the io-uring crate exposes registration and the entry
//! type, not a managed ring): an array of `io_uring_buf` entries whose tail the application
//! advances with a release store, and one contiguous block of equally sized buffers.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// An anonymous, private, page-aligned mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
    group: u16,
}

impl BufRing {
    /// `entries` must be a power of two (at most 32768).
    pub fn new(group: u16, entries: u16, buf_size: u32) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let ring = Mapping::new(entries as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(entries as usize * buf_size as usize)?;
        let mut bufring = BufRing {
            ring,
            buffers,
            entries,
            buf_size,
            tail: 0,
            group,
        };
        for bid in 0..entries {
            bufring.push(bid);
        }
        bufring.publish();
        Ok(bufring)
    }

    /// Registers the ring with `submitter`. The ring must outlive the io_uring instance.
    pub fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is mapped for `entries` entries and lives as long as `self`;
        // the event loop drops its io_uring (unregistering the ring) before this BufRing.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                self.entries,
                self.group,
                0,
            )
        }
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    ///
    /// # Safety
    /// `bid` must come from a completion the kernel posted for this ring and must not have
    /// been recycled since.
    pub unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size as usize);
        let offset = bid as usize * self.buf_size as usize;
        // SAFETY: in bounds (asserted); the kernel has finished writing this buffer and will
        // not touch it again until it is recycled.
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(offset), len) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = (self.tail & mask) as usize;
        // SAFETY: `index` < entries, inside the ring mapping; the kernel only reads entries
        // between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(index) };
        entry
            .set_addr(self.buffers.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_size));
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first ring entry, which is mapped; the
        // kernel reads it with an acquire load, so a release store publishes the entries.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr.as_ptr().cast()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}
