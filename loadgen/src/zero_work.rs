//! The zero-work responder: "what an io_uring server with no work achieves", the limit seqd is
//! measured against (issue 16).
//!
//! One thread, one io_uring: a multishot accept, a multishot recv per connection into a
//! provided buffer ring, and a send of the replies each receive produced. Every 16-byte binary
//! `GETSEQ` request on the default sequence is answered with a valid `GETSEQ` reply whose
//! number comes from one counter shared by all connections (so `loadgen run --verify` holds
//! over any number of connections). It does nothing else: no sessions, no durability, no
//! other requests. Anything that is not such a frame is answered with one error reply and the
//! connection is closed, so a misconfigured benchmark fails loudly instead of measuring
//! something else.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, cqueue, opcode, squeue};
use seqd::protocol::binary::{self, FRAME_LEN, opcode as op};
use seqd::protocol::{Problem, Reply};
use seqd::server::BusyPoll;

/// Submission queue entries.
const RING_ENTRIES: u32 = 4096;
/// Provided receive buffers and their size: 50 connections x 64 pipelined requests x 16 bytes
/// is 50 KiB in flight, far below 1 MiB.
const BUFFERS: u16 = 512;
const BUFFER_SIZE: u32 = 2048;
const BUFFER_GROUP: u16 = 0;

const ACCEPT: u64 = 1 << 32;
const RECV: u64 = 2 << 32;
const SEND: u64 = 3 << 32;
const KIND_MASK: u64 = 0xff << 32;

/// Binds `addr` (port 0 picks a free one).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// One connection's bytes in transit.
#[derive(Default)]
struct Conn {
    /// The start of a frame split across two receives (fewer than 16 bytes).
    partial: Vec<u8>,
    /// Replies produced while a send is in flight.
    out: Vec<u8>,
    /// The bytes the kernel is sending; untouched until the send completes.
    sending: Vec<u8>,
    sent: usize,
    in_flight: bool,
    recv_done: bool,
    closing: bool,
}

/// Serves connections forever, spinning up to `busy_poll` for more completions before it
/// sleeps (with `auto`, not while a CPU quota is in force, as seqd). Returns only if the ring
/// or the listener fails for good.
pub fn serve(listener: TcpListener, busy_poll: BusyPoll) -> io::Result<()> {
    let spin_off = Arc::new(AtomicBool::new(false));
    if busy_poll.off_under_cpu_quota {
        let flag = spin_off.clone();
        seqd::server::cpu_quota::watch(move |quota| {
            let off = quota.is_some();
            if flag.swap(off, Ordering::Relaxed) != off {
                match quota {
                    Some(quota) => eprintln!("CPU quota in force ({quota}): no busy polling"),
                    None => eprintln!("no CPU quota any more: busy polling again"),
                }
            }
            Arc::strong_count(&flag) > 1
        })?;
    }
    let mut ring = create_ring()?;
    let bufs = BufRing::new(BUFFER_GROUP, BUFFERS, BUFFER_SIZE)?;
    bufs.register(&ring.submitter())?;
    let mut responder = Responder {
        listener: listener.as_raw_fd(),
        bufs,
        conns: HashMap::new(),
        next: 1,
    };
    responder.arm_accept(&mut ring)?;
    loop {
        let spin = if spin_off.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            busy_poll.spin
        };
        wait_for_completions(&mut ring, spin)?;
        let completions: Vec<cqueue::Entry> = ring.completion().collect();
        for cqe in completions {
            responder.complete(&mut ring, &cqe)?;
        }
    }
}

/// The ring seqd's loops would get on this kernel: task work deferred to the one thread that
/// submits (SINGLE_ISSUER + DEFER_TASKRUN, 6.1+), run when it enters the kernel and flagged
/// in shared memory (TASKRUN_FLAG) for the busy poll; a plain ring where the kernel has not
/// those (EINVAL).
fn create_ring() -> io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    match deferred {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder().build(RING_ENTRIES),
        ring => ring,
    }
}

/// Submits what is queued, then waits for a completion: spinning on the completion queue for
/// up to `busy_poll` first (as seqd's loop does), sleeping in the kernel after that.
fn wait_for_completions(ring: &mut IoUring, busy_poll: Duration) -> io::Result<()> {
    if busy_poll.is_zero() {
        ring.submit_and_wait(1)?;
        return Ok(());
    }
    // As seqd's loop: no system call when nothing is queued and no work is pending.
    let nothing_to_do = {
        let queue = ring.submission();
        queue.is_empty() && !queue.taskrun() && !queue.cq_overflow()
    };
    if !nothing_to_do {
        ring.submit()?;
    }
    let deadline = Instant::now() + busy_poll;
    while Instant::now() < deadline {
        // Runs deferred task work so completions can appear without a sleep.
        if ring.submission().taskrun() {
            ring.submit()?;
        }
        if !ring.completion().is_empty() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    ring.submit_and_wait(1)?;
    Ok(())
}

struct Responder {
    listener: RawFd,
    bufs: BufRing,
    conns: HashMap<RawFd, Conn>,
    /// The next number handed out, on any connection.
    next: u64,
}

impl Responder {
    fn arm_accept(&self, ring: &mut IoUring) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(Fd(self.listener))
            .build()
            .user_data(ACCEPT);
        push(ring, entry)
    }

    fn complete(&mut self, ring: &mut IoUring, cqe: &cqueue::Entry) -> io::Result<()> {
        let data = cqe.user_data();
        let fd = (data & 0xffff_ffff) as RawFd;
        match data & KIND_MASK {
            ACCEPT => self.accepted(ring, cqe),
            RECV => self.received(ring, fd, cqe),
            SEND => self.sent(ring, fd, cqe.result()),
            _ => Ok(()),
        }
    }

    fn accepted(&mut self, ring: &mut IoUring, cqe: &cqueue::Entry) -> io::Result<()> {
        let res = cqe.result();
        if res >= 0 {
            let fd = res;
            set_nodelay(fd);
            self.conns.insert(fd, Conn::default());
            arm_recv(ring, fd)?;
        } else if !is_transient_accept_error(-res) {
            return Err(io::Error::from_raw_os_error(-res));
        } else {
            eprintln!(
                "zero-work: accept failed: {}; retrying",
                io::Error::from_raw_os_error(-res)
            );
        }
        if !cqueue::more(cqe.flags()) {
            self.arm_accept(ring)?;
        }
        Ok(())
    }

    fn received(&mut self, ring: &mut IoUring, fd: RawFd, cqe: &cqueue::Entry) -> io::Result<()> {
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let Some(conn) = self.conns.get_mut(&fd) else {
            if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                self.bufs.recycle(bid);
            }
            return Ok(());
        };
        if res > 0
            && let Some(bid) = cqueue::buffer_select(cqe.flags())
        {
            if !conn.closing {
                // SAFETY: `bid` comes from this completion and is recycled just below.
                let input = unsafe { self.bufs.filled(bid, res as usize) };
                answer(conn, input, &mut self.next);
                if conn.closing {
                    // SAFETY: shutting down a socket this responder owns; the pending
                    // multishot recv then completes with 0 and the fd is closed after it.
                    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
                }
            }
            self.bufs.recycle(bid);
        }
        if res > 0 || res == -libc::ENOBUFS {
            // ENOBUFS: every buffer was in use; they are back now, so receive again.
            if !more && conn.closing {
                conn.recv_done = true;
            } else if !more {
                arm_recv(ring, fd)?;
            }
        } else {
            // 0: the peer closed; < 0: the connection broke. Either way the recv has ended.
            conn.recv_done = !more;
            conn.closing = true;
        }
        self.flush(ring, fd)
    }

    fn sent(&mut self, ring: &mut IoUring, fd: RawFd, res: i32) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return Ok(());
        };
        conn.in_flight = false;
        if res < 0 {
            conn.closing = true;
            conn.sending.clear();
            conn.out.clear();
            // SAFETY: as in `received`: ends the pending recv so that the fd can be closed.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        } else {
            conn.sent += res as usize;
            if conn.sent >= conn.sending.len() {
                conn.sending.clear();
                conn.sent = 0;
            }
        }
        self.flush(ring, fd)
    }

    /// Starts a send if replies wait and none is in flight; closes a finished connection.
    fn flush(&mut self, ring: &mut IoUring, fd: RawFd) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return Ok(());
        };
        if !conn.in_flight {
            if conn.sending.is_empty() {
                std::mem::swap(&mut conn.sending, &mut conn.out);
                conn.sent = 0;
            }
            if !conn.sending.is_empty() {
                let rest = &conn.sending[conn.sent..];
                let entry = opcode::Send::new(Fd(fd), rest.as_ptr(), rest.len() as u32)
                    .build()
                    .user_data(SEND | fd as u64);
                conn.in_flight = true;
                return push(ring, entry);
            }
        }
        if conn.closing && conn.recv_done && !conn.in_flight {
            self.conns.remove(&fd);
            // SAFETY: no operation on `fd` is pending any more (recv ended, no send).
            unsafe { libc::close(fd) };
        }
        Ok(())
    }
}

/// Answers every complete GETSEQ frame in `input` (after the connection's partial frame) into
/// `conn.out`. Anything else gets one error reply and marks the connection closing.
fn answer(conn: &mut Conn, mut input: &[u8], next: &mut u64) {
    if !conn.partial.is_empty() {
        let need = FRAME_LEN - conn.partial.len();
        let take = need.min(input.len());
        conn.partial.extend_from_slice(&input[..take]);
        input = &input[take..];
        if conn.partial.len() < FRAME_LEN {
            return;
        }
        let frame = std::mem::take(&mut conn.partial);
        if !answer_frame(&frame, &mut conn.out, next) {
            conn.closing = true;
            return;
        }
    }
    let mut frames = input.chunks_exact(FRAME_LEN);
    for frame in frames.by_ref() {
        if !answer_frame(frame, &mut conn.out, next) {
            conn.closing = true;
            return;
        }
    }
    conn.partial.extend_from_slice(frames.remainder());
}

/// The GETSEQ request on the default sequence, byte for byte.
const GETSEQ: [u8; FRAME_LEN] = {
    let mut frame = [0u8; FRAME_LEN];
    frame[0] = binary::MAGIC;
    frame[1] = binary::VERSION;
    frame[2] = op::GETSEQ;
    frame
};

fn answer_frame(frame: &[u8], out: &mut Vec<u8>, next: &mut u64) -> bool {
    if frame == GETSEQ {
        binary::encode_reply(out, &Reply::Number(*next));
        *next += 1;
        return true;
    }
    let opcode = frame[2];
    binary::encode_reply(
        out,
        &Reply::Error {
            opcode,
            problem: Problem::UnknownOpcode(opcode),
        },
    );
    false
}

fn arm_recv(ring: &mut IoUring, fd: RawFd) -> io::Result<()> {
    let entry = opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
        .build()
        .user_data(RECV | fd as u64);
    push(ring, entry)
}

/// Queues `entry`, submitting what is queued first when the submission queue is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points at (a connection's `sending`, the buffer ring)
        // stays in place until its completion arrives.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setting an option on a socket this responder owns, from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn is_transient_accept_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE
            | libc::ENFILE
            | libc::ENOBUFS
            | libc::ENOMEM
            | libc::EPROTO
            | libc::EPERM
            | libc::ECONNABORTED
            | libc::EINTR
    )
}

// The provided-buffer ring below repeats the one in seqd's src/server/bufring.rs: that module
// is private to seqd's server layer (tests/architecture.rs keeps the layers apart), and the
// limit rival must not borrow seqd's server code anyway, or it would move with it.

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

/// Receive buffers the kernel picks from: an array of `io_uring_buf` entries whose tail we
/// advance with a release store, and one block of equally sized buffers.
struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    entries: u16,
    buf_size: u32,
    tail: u16,
    group: u16,
}

impl BufRing {
    /// `entries` must be a power of two (at most 32768).
    fn new(group: u16, entries: u16, buf_size: u32) -> io::Result<BufRing> {
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

    fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is mapped for `entries` entries and lives as long as `self`,
        // which `serve` keeps for as long as the io_uring instance.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                self.entries,
                self.group,
                0,
            )
        }
    }

    /// # Safety
    /// `bid` must come from a completion the kernel posted for this ring and must not have
    /// been recycled since.
    unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size as usize);
        let offset = bid as usize * self.buf_size as usize;
        // SAFETY: in bounds (asserted); the kernel has finished writing this buffer and will
        // not touch it again until it is recycled.
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(offset), len) }
    }

    fn recycle(&mut self, bid: u16) {
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

    fn request(opcode: u8) -> Vec<u8> {
        let mut f = Vec::new();
        binary::encode_request(&mut f, opcode, 0, 0);
        f
    }

    #[test]
    fn answers_getseq_frames_split_anywhere_with_one_counter() {
        let mut input = request(op::GETSEQ);
        input.extend(request(op::GETSEQ));
        input.extend(request(op::GETSEQ));
        let mut conn = Conn::default();
        let mut next = 7;
        answer(&mut conn, &input[..5], &mut next);
        answer(&mut conn, &input[5..37], &mut next);
        answer(&mut conn, &input[37..], &mut next);
        let mut expected = Vec::new();
        for n in 7..10 {
            binary::encode_reply(&mut expected, &Reply::Number(n));
        }
        assert_eq!(conn.out, expected);
        assert!(conn.partial.is_empty() && !conn.closing);
        assert_eq!(next, 10);
    }

    #[test]
    fn anything_but_getseq_gets_an_error_and_closes() {
        let mut conn = Conn::default();
        let mut next = 1;
        let mut input = request(op::GETSEQ);
        input.extend(request(op::PING));
        input.extend(request(op::GETSEQ));
        answer(&mut conn, &input, &mut next);
        assert!(conn.closing);
        assert_eq!(next, 2, "nothing after the bad frame is answered");
        assert_eq!(conn.out[16], binary::MAGIC);
        assert_ne!(conn.out[16 + 3], binary::STATUS_OK);
    }
}
