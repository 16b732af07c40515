//! [`IdSource`]: ids handed out from a local range, the next range fetched in the background
//! (a double buffer, as Meituan's Leaf does), so the caller almost never waits for the
//! network.
//!
//! Guarantees, given ranges that are seqd batches (`GETSEQ_BATCH`) of one sequence:
//! - **Unique forever**: every id comes from a range the server issued once; seqd never
//!   issues a number twice (restarts, `kill -9`, failovers included).
//! - **Increasing per `IdSource`**: ranges are fetched one after the other, each after the
//!   previous one's reply, so each lies above the last (the server's order is linearizable).
//! - **Not ordered across processes**: two `IdSource`s each hold a range; ids from one may be
//!   above or below ids handed out later by the other.
//! - **Gaps**: a process that exits (or drops its `IdSource`) abandons the rest of its current
//!   range and the prefetched one: at most `2 × max_batch` ids are never used.
//! - **Outages**: with the next range prefetched, ids keep coming while the server is down,
//!   for as long as the buffered ids last at the current rate (about `range_lasts`, plus what
//!   is left of the current range); then [`IdSource::next_id`] waits, up to `wait_timeout`.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ClientError;
use crate::protocol::ErrorCode;

/// Where an [`IdSource`] gets its ranges: one call asks for `count` consecutive numbers
/// (a batch or a lease; the server may be asked again after a failure). Called from the
/// `IdSource`'s own background thread, so it may block.
pub trait RangeSource: Send + 'static {
    fn fetch(&mut self, count: u64) -> Result<Range<u64>, ClientError>;
}

impl<F> RangeSource for F
where
    F: FnMut(u64) -> Result<Range<u64>, ClientError> + Send + 'static,
{
    fn fetch(&mut self, count: u64) -> Result<Range<u64>, ClientError> {
        self(count)
    }
}

/// How an [`IdSource`] sizes and refills its ranges.
#[derive(Debug, Clone)]
pub struct IdSourceOptions {
    /// The size of the first range, and the smallest asked for.
    pub min_batch: u64,
    /// The largest range asked for (at most the server's `--max-batch`, 1 000 000 by default;
    /// a smaller server limit is learnt from its refusal). It also bounds the gap a process
    /// that exits leaves: `2 × max_batch`.
    pub max_batch: u64,
    /// How long a range should last at the rate ids were taken lately: the next range is
    /// sized `rate × range_lasts` (within the bounds above).
    pub range_lasts: Duration,
    /// The fraction of a range used when the next one is requested (Leaf: 0.1 to 0.2).
    pub refill_at: f64,
    /// How long [`IdSource::next_id`] waits for a range when none is in hand.
    pub wait_timeout: Duration,
}

impl Default for IdSourceOptions {
    fn default() -> IdSourceOptions {
        IdSourceOptions {
            min_batch: 1_000,
            max_batch: 1_000_000,
            range_lasts: Duration::from_secs(10),
            refill_at: 0.2,
            wait_timeout: Duration::from_secs(15),
        }
    }
}

/// What an [`IdSource`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdSourceStats {
    /// Ids handed to the caller.
    pub handed_out: u64,
    /// Calls that found no id in hand and waited for a range from the network.
    pub waited: u64,
    /// Ranges received from the server.
    pub ranges: u64,
    /// Fetches that failed and were tried again.
    pub failed_fetches: u64,
}

/// Pause after a failed fetch, doubled up to the maximum while fetches keep failing.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Between the caller and the background fetcher.
#[derive(Default)]
struct Slot {
    /// A range is wanted of this size.
    wanted: Option<u64>,
    /// The prefetched range.
    ready: Option<Range<u64>>,
    /// The last fetch error since the last range arrived.
    error: Option<ClientError>,
    failed_fetches: u64,
    closed: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Signals the fetcher (a range is wanted, or the `IdSource` is gone).
    wanted: Condvar,
    /// Signals a blocking caller (a range is ready).
    ready: Condvar,
    /// Signals an async caller (a range is ready).
    #[cfg(feature = "tokio")]
    ready_async: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The fetcher never panics holding the lock; a poisoned one still holds valid state.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ids from a local range (see the module documentation for the guarantees). One owner
/// takes ids (`&mut self`); a fetcher thread gets the next range in the background.
pub struct IdSource {
    /// The next id to hand out, and the end of the current range.
    next: u64,
    end: u64,
    /// The fast path hands out ids below this: the refill mark, then the end.
    limit: u64,
    /// Where the current range started, when, and how long it is.
    range_start: u64,
    range_len: u64,
    range_since: Instant,
    /// The next range was asked for (once per range).
    requested: bool,
    /// Ids per second, smoothed over the ranges used so far.
    rate: f64,
    handed_before: u64,
    waited: u64,
    ranges: u64,
    options: IdSourceOptions,
    shared: Arc<Shared>,
    fetcher: Option<JoinHandle<()>>,
}

impl IdSource {
    /// Starts the fetcher thread and asks for the first range (`min_batch` ids); the first
    /// call waits for it.
    pub fn new(source: impl RangeSource, options: IdSourceOptions) -> IdSource {
        let mut options = options;
        options.max_batch = options.max_batch.max(1);
        options.min_batch = options.min_batch.clamp(1, options.max_batch);
        options.refill_at = options.refill_at.clamp(0.0, 1.0);
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                wanted: Some(options.min_batch),
                ..Slot::default()
            }),
            wanted: Condvar::new(),
            ready: Condvar::new(),
            #[cfg(feature = "tokio")]
            ready_async: tokio::sync::Notify::new(),
        });
        let fetcher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("seqd-id-source".into())
                .spawn(move || fetch_loop(source, &shared))
        };
        IdSource {
            next: 0,
            end: 0,
            limit: 0,
            range_start: 0,
            range_len: 0,
            range_since: Instant::now(),
            // The first range is asked for by `new`.
            requested: true,
            rate: 0.0,
            handed_before: 0,
            waited: 0,
            ranges: 0,
            options,
            shared,
            // Without a thread no range ever comes: `next` times out and says so.
            fetcher: fetcher.ok(),
        }
    }

    /// The next id: from the range in hand, else from the prefetched one, else (rarely)
    /// after waiting for the network, up to `wait_timeout`. The error after a timeout is the
    /// fetch's last failure, or [`ClientError::Timeout`].
    #[inline]
    pub fn next_id(&mut self) -> Result<u64, ClientError> {
        if self.next < self.limit {
            let id = self.next;
            self.next += 1;
            return Ok(id);
        }
        self.next_slow()
    }

    /// [`IdSource::next_id`] for async code: waiting for a range yields instead of blocking
    /// the thread.
    #[cfg(feature = "tokio")]
    pub async fn next_id_async(&mut self) -> Result<u64, ClientError> {
        if self.next < self.limit {
            let id = self.next;
            self.next += 1;
            return Ok(id);
        }
        if self.next == self.end {
            self.refill_async().await?;
        }
        self.next_slow()
    }

    /// Ids in hand: the rest of the current range and the prefetched range.
    pub fn buffered(&self) -> u64 {
        let ready = self
            .shared
            .lock()
            .ready
            .as_ref()
            .map_or(0, |r| r.end - r.start);
        self.end - self.next + ready
    }

    pub fn stats(&self) -> IdSourceStats {
        IdSourceStats {
            handed_out: self.handed_before + (self.next - self.range_start),
            waited: self.waited,
            ranges: self.ranges,
            failed_fetches: self.shared.lock().failed_fetches,
        }
    }

    #[cold]
    fn next_slow(&mut self) -> Result<u64, ClientError> {
        loop {
            if self.next < self.limit {
                let id = self.next;
                self.next += 1;
                return Ok(id);
            }
            if self.next == self.end {
                let range = match self.take_ready() {
                    Some(range) => range,
                    None => self.wait_blocking()?,
                };
                self.start_range(range);
            } else {
                // The refill mark: ask for the next range, and go on with this one.
                self.request_next();
                self.limit = self.end;
            }
        }
    }

    fn take_ready(&mut self) -> Option<Range<u64>> {
        self.shared.lock().ready.take()
    }

    fn wait_blocking(&mut self) -> Result<Range<u64>, ClientError> {
        self.waited += 1;
        self.request_next();
        let deadline = Instant::now() + self.options.wait_timeout;
        let mut slot = self.shared.lock();
        loop {
            if let Some(range) = slot.ready.take() {
                return Ok(range);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(slot
                    .error
                    .take()
                    .unwrap_or(ClientError::Timeout(self.options.wait_timeout)));
            }
            slot = match self.shared.ready.wait_timeout(slot, deadline - now) {
                Ok((slot, _)) => slot,
                Err(poison) => poison.into_inner().0,
            };
        }
    }

    #[cfg(feature = "tokio")]
    async fn refill_async(&mut self) -> Result<(), ClientError> {
        if self.shared.lock().ready.is_some() {
            return Ok(());
        }
        self.waited += 1;
        self.request_next();
        let shared = &self.shared;
        let wait = async {
            loop {
                let notified = shared.ready_async.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.lock().ready.is_some() {
                    return;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(self.options.wait_timeout, wait).await {
            Ok(()) => Ok(()),
            Err(_) => Err(shared
                .lock()
                .error
                .take()
                .unwrap_or(ClientError::Timeout(self.options.wait_timeout))),
        }
    }

    fn start_range(&mut self, range: Range<u64>) {
        self.handed_before += self.next - self.range_start;
        self.ranges += 1;
        self.requested = false;
        self.next = range.start;
        self.end = range.end;
        self.range_start = range.start;
        self.range_len = range.end - range.start;
        self.range_since = Instant::now();
        let mark = (self.range_len as f64 * self.options.refill_at) as u64;
        self.limit = range.start + mark.min(self.range_len);
        if mark == 0 {
            self.request_next();
            self.limit = self.end;
        }
    }

    /// Asks the fetcher for the next range, sized from the rate the current one is used at
    /// (once per range).
    fn request_next(&mut self) {
        if self.requested {
            return;
        }
        self.requested = true;
        let used = (self.next - self.range_start) as f64;
        self.observe(used, self.range_since.elapsed().as_secs_f64());
        let size = self.next_size();
        self.shared.lock().wanted = Some(size);
        self.shared.wanted.notify_one();
    }

    fn observe(&mut self, used: f64, seconds: f64) {
        if used <= 0.0 {
            return;
        }
        let rate = used / seconds.max(1e-9);
        self.rate = if self.rate == 0.0 {
            rate
        } else {
            0.5 * self.rate + 0.5 * rate
        };
    }

    fn next_size(&self) -> u64 {
        let wanted = self.rate * self.options.range_lasts.as_secs_f64();
        (wanted as u64).clamp(self.options.min_batch, self.options.max_batch)
    }
}

impl Drop for IdSource {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wanted.notify_one();
        // The fetcher may be inside a fetch that takes long (a server down): it ends after
        // it, on its own; waiting for it here would make dropping block.
        drop(self.fetcher.take());
    }
}

/// The fetcher thread: one range at a time, retried with a growing pause while the source
/// fails, until the `IdSource` is dropped.
fn fetch_loop(mut source: impl RangeSource, shared: &Shared) {
    // A server that refuses the size (`OutOfRange`, its `--max-batch` in the detail) is
    // asked for no more than that from then on.
    let mut server_max = u64::MAX;
    loop {
        let mut count = {
            let mut slot = shared.lock();
            loop {
                if slot.closed {
                    return;
                }
                if let Some(count) = slot.wanted {
                    break count;
                }
                slot = match shared.wanted.wait(slot) {
                    Ok(slot) => slot,
                    Err(poison) => poison.into_inner(),
                };
            }
        };
        let mut pause = RETRY_MIN;
        let range = loop {
            match source.fetch(count.min(server_max)) {
                Ok(range) if range.start < range.end => break range,
                Ok(range) => {
                    let error = ClientError::Protocol(format!("empty range {range:?}"));
                    if !failed(shared, error) {
                        return;
                    }
                }
                Err(ClientError::Server {
                    code: ErrorCode::OutOfRange,
                    detail,
                    ..
                }) if detail >= 1 && detail < count.min(server_max) => {
                    server_max = detail;
                    continue;
                }
                Err(error) => {
                    if !failed(shared, error) {
                        return;
                    }
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_MAX);
            count = shared.lock().wanted.unwrap_or(count);
        };
        let mut slot = shared.lock();
        slot.wanted = None;
        slot.error = None;
        slot.ready = Some(range);
        drop(slot);
        shared.ready.notify_all();
        #[cfg(feature = "tokio")]
        shared.ready_async.notify_waiters();
    }
}

/// Records a failed fetch; false once the `IdSource` is gone.
fn failed(shared: &Shared, error: ClientError) -> bool {
    let mut slot = shared.lock();
    slot.failed_fetches += 1;
    slot.error = Some(error);
    !slot.closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A source counting like a server: each fetch gets the next `count` numbers.
    fn counter() -> (Arc<AtomicU64>, impl RangeSource) {
        let next = Arc::new(AtomicU64::new(1));
        let source = {
            let next = next.clone();
            move |count: u64| {
                let first = next.fetch_add(count, Ordering::SeqCst);
                Ok(first..first + count)
            }
        };
        (next, source)
    }

    #[test]
    fn ids_increase_without_gaps_while_the_source_answers() {
        let (_, source) = counter();
        let options = IdSourceOptions {
            min_batch: 10,
            max_batch: 100,
            ..IdSourceOptions::default()
        };
        let mut ids = IdSource::new(source, options);
        let taken: Vec<u64> = (0..10_000).map(|_| ids.next_id().unwrap()).collect();
        // One IdSource on its own source: consecutive ranges, so no gap either.
        assert_eq!(taken, (1..=10_000).collect::<Vec<u64>>());
        let stats = ids.stats();
        assert_eq!(stats.handed_out, 10_000);
        assert!(stats.ranges >= 100);
    }

    #[test]
    fn ranges_grow_with_the_rate_up_to_the_maximum() {
        let (_, source) = counter();
        let options = IdSourceOptions {
            min_batch: 10,
            max_batch: 5_000,
            ..IdSourceOptions::default()
        };
        let mut ids = IdSource::new(source, options);
        for _ in 0..100_000 {
            ids.next_id().unwrap();
        }
        // Taken as fast as a loop can: after the first ranges every one is the maximum.
        assert!(ids.stats().ranges < 100, "{:?}", ids.stats());
    }

    #[test]
    fn a_failing_source_is_retried_and_a_caller_times_out_with_its_error() {
        let calls = Arc::new(AtomicU64::new(0));
        let source = {
            let calls = calls.clone();
            move |count: u64| {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(ClientError::Closed)
                } else {
                    Ok(100..100 + count)
                }
            }
        };
        let options = IdSourceOptions {
            min_batch: 5,
            max_batch: 5,
            ..IdSourceOptions::default()
        };
        let mut ids = IdSource::new(source, options);
        assert_eq!(ids.next_id().unwrap(), 100);
        assert_eq!(ids.stats().failed_fetches, 3);

        let never = |_: u64| -> Result<Range<u64>, ClientError> { Err(ClientError::Closed) };
        let options = IdSourceOptions {
            wait_timeout: Duration::from_millis(50),
            ..IdSourceOptions::default()
        };
        let mut ids = IdSource::new(never, options);
        assert!(matches!(ids.next_id(), Err(ClientError::Closed)));
    }

    #[test]
    fn a_smaller_server_limit_is_learnt_from_its_refusal() {
        let source = |count: u64| {
            if count > 7 {
                Err(ClientError::Server {
                    code: ErrorCode::OutOfRange,
                    detail: 7,
                    message: "batch size must be between 1 and 7 (--max-batch)".into(),
                })
            } else {
                Ok(1..1 + count)
            }
        };
        let options = IdSourceOptions {
            min_batch: 50,
            max_batch: 50,
            ..IdSourceOptions::default()
        };
        let mut ids = IdSource::new(source, options);
        assert_eq!(ids.next_id().unwrap(), 1);
        assert_eq!(
            ids.buffered(),
            6 + 7 * u64::from(ids.shared.lock().ready.is_some())
        );
    }
}
