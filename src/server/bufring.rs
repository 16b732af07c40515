//! A provided-buffer ring: receive buffers the kernel picks from when a multishot recv
//! completes, so a connection owns no receive buffer while it is idle.
//!
//! With incremental consumption (`IOU_PBUF_RING_INC`, Linux 6.12) the kernel takes only the
//! bytes a receive needs from the buffer at the ring's head and leaves the rest of it there
//! for the next receive, on any connection: small frames from many connections are packed
//! into one buffer, one after another, instead of each taking a buffer of its own. A
//! completion then says whether the kernel still holds the buffer (`IORING_CQE_F_BUF_MORE`);
//! it is recycled only once it does not.
//!
//! Written against the raw ring layout (the io-uring crate exposes registration and the entry
//! type, not a managed ring): an array of `io_uring_buf` entries whose tail the application
//! advances with a release store, and one contiguous block of equally sized buffers.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// `IOU_PBUF_RING_INC` from the kernel's io_uring.h (the io-uring crate does not export it).
const IOU_PBUF_RING_INC: u16 = 2;

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
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// Per buffer, the bytes of it the kernel has filled so far (incremental only): where the
    /// next completion's bytes begin.
    consumed: Box<[u32]>,
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
            incremental: false,
            consumed: vec![0; entries as usize].into_boxed_slice(),
        };
        for bid in 0..entries {
            bufring.push(bid);
        }
        bufring.publish();
        Ok(bufring)
    }

    /// Registers the ring with `submitter`. The ring must outlive the io_uring instance.
    pub fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        self.register_with_flags(submitter, 0)
    }

    /// Registers the ring with incremental consumption where the kernel has it (6.12+),
    /// plainly otherwise; returns whether it is incremental.
    pub fn register_incremental(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
    ) -> io::Result<bool> {
        match self.register_with_flags(submitter, IOU_PBUF_RING_INC) {
            Ok(()) => {
                self.incremental = true;
                Ok(true)
            }
            // EINVAL: a flag this kernel does not know.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.register(submitter).map(|()| false)
            }
            Err(e) => Err(e),
        }
    }

    fn register_with_flags(
        &self,
        submitter: &io_uring::Submitter<'_>,
        flags: u16,
    ) -> io::Result<()> {
        // SAFETY: the ring memory is mapped for `entries` entries and lives as long as `self`;
        // the event loop drops its io_uring (unregistering the ring) before this BufRing.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                self.entries,
                self.group,
                flags,
            )
        }
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// The `len` bytes a completion of buffer `bid` received, as the kernel filled them.
    ///
    /// # Safety
    /// `bid` and `len` must come from a completion the kernel posted for this ring, not yet
    /// passed to [`BufRing::release`].
    pub unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let start = self.consumed.get(bid as usize).copied().unwrap_or(0) as usize;
        assert!(bid < self.entries && start + len <= self.buf_size as usize);
        let offset = bid as usize * self.buf_size as usize + start;
        // SAFETY: in bounds (asserted); the kernel has finished writing these bytes and will
        // not touch them again (it writes past them, or after the buffer is recycled).
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(offset), len) }
    }

    /// Done with the `len` bytes a completion of buffer `bid` (with CQE `flags`) received:
    /// the buffer goes back to the kernel unless the kernel still fills it.
    pub fn release(&mut self, bid: u16, len: usize, flags: u32) {
        if self.incremental && io_uring::cqueue::buffer_more(flags) {
            if let Some(consumed) = self.consumed.get_mut(bid as usize) {
                *consumed += len as u32;
            }
            return;
        }
        if let Some(consumed) = self.consumed.get_mut(bid as usize) {
            *consumed = 0;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUF_MORE: u32 = 1 << 4;

    #[test]
    fn an_incremental_buffer_is_read_on_from_where_the_last_completion_ended() {
        let mut ring = BufRing::new(0, 4, 64).expect("mapping");
        ring.incremental = true;
        let tail = ring.tail;
        let base = ring.buffers.ptr.as_ptr() as usize + 2 * 64;
        // SAFETY: as the kernel would report: 16 bytes of buffer 2, which it keeps filling.
        let first = unsafe { ring.filled(2, 16) }.as_ptr() as usize;
        ring.release(2, 16, BUF_MORE);
        // SAFETY: the next 48 bytes of it, and then it is used up.
        let second = unsafe { ring.filled(2, 48) }.as_ptr() as usize;
        assert_eq!((first - base, second - base), (0, 16));
        assert_eq!(ring.tail, tail, "still the kernel's: not recycled");
        ring.release(2, 48, 0);
        assert_eq!(ring.tail, tail.wrapping_add(1), "recycled once used up");
        // SAFETY: recycled, so the kernel fills it from its start again.
        let again = unsafe { ring.filled(2, 8) }.as_ptr() as usize;
        assert_eq!(again - base, 0);
    }

    #[test]
    fn a_plain_buffer_is_recycled_after_every_completion() {
        let mut ring = BufRing::new(0, 4, 64).expect("mapping");
        let tail = ring.tail;
        ring.release(1, 16, BUF_MORE);
        assert_eq!(ring.tail, tail.wrapping_add(1));
    }
}
