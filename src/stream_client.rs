//! A client for the stream protocol, with the state it needs to resume: like the
//! seed's client it keeps what it received in `{dir}/{client-id}.state`, resumes from it
//! with the same client id, and verifies the checksum at the end.
//!
//! The state file is a journal, appended to *before* the numbers it holds are acknowledged:
//! a number the server saw acknowledged is never lost by the client, even if the client is
//! killed (with `sync`, even on power loss), so a resumed stream can always complete.
//!
//! ```text
//! seqd-stream-state 1 <client-id> <n>      header
//! <position> <number>                     one line per number received
//! ```
//!
//! ```no_run
//! use seqd::stream_client::{Options, Outcome, run};
//! let options = Options::new("127.0.0.1:10002", "my-client-id-abc", 10);
//! let stop = std::sync::atomic::AtomicBool::new(false);
//! match run(&options, &stop, |event| println!("{event}"))? {
//!     Outcome::Verified { checksum } => println!("checksum match"),
//!     Outcome::Interrupted => println!("stopped; run again with the same id to resume"),
//! }
//! # Ok::<(), seqd::stream_client::StreamError>(())
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::stream::{self as wire, CHECKSUM_LEN, Message};
use crate::protocol::{ParseError, ParseOk};

const HEADER: &str = "seqd-stream-state 1";
/// How often a blocked read wakes to look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("state file {}: {what}", path.display())]
    State { path: PathBuf, what: String },
    #[error(
        "the server closed the connection before the stream ended (a refused CON is closed \
         without a word: see the server's log)"
    )]
    Closed,
    #[error("no message from the server for {0:?}")]
    Silent(Duration),
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error(
        "checksum mismatch: the server sent {}, the numbers received give {}",
        hex(server),
        hex(computed)
    )]
    Mismatch {
        server: [u8; CHECKSUM_LEN],
        computed: [u8; CHECKSUM_LEN],
    },
}

impl StreamError {
    /// Whether connecting again (and resuming) may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StreamError::Io(_) | StreamError::Closed | StreamError::Silent(_)
        )
    }
}

/// What a client id may be: it names the state file too.
pub fn validate_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("a client id has 1 to 128 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        || id.starts_with('.')
    {
        return Err(
            "a client id may contain only letters, digits and _ . : - (and may not \
                    start with a dot)"
                .into(),
        );
    }
    Ok(())
}

/// What the client has received so far, and its journal on disk.
pub struct StreamState {
    path: PathBuf,
    client_id: String,
    numbers: Vec<Option<u32>>,
    received: u32,
    journal: File,
    /// Lines not yet written.
    unwritten: Vec<u8>,
    sync: bool,
}

/// How a number fitted what was received before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// Received before, with the same number (a resend).
    Again,
}

impl StreamState {
    /// Opens the state of `client_id`'s stream of `count` numbers in `dir`, creating it if
    /// there is none. An existing state for another `count` is an error (resume with the
    /// same `n`, or use another client id).
    pub fn open(
        dir: &Path,
        client_id: &str,
        count: u32,
        sync: bool,
    ) -> Result<StreamState, StreamError> {
        let path = dir.join(format!("{client_id}.state"));
        let fail = |what: String| StreamError::State {
            path: path.clone(),
            what,
        };
        validate_client_id(client_id).map_err(&fail)?;
        let mut numbers = vec![None; count as usize];
        let mut received = 0;
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        };
        // Bytes after the last line feed: a line cut short by a crash mid-write (its number
        // was never acknowledged), dropped.
        let complete = existing.as_deref().map(|bytes| {
            bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |lf| lf + 1)
        });
        if let (Some(bytes), Some(complete)) = (&existing, complete) {
            let mut lines = bytes[..complete].split(|&b| b == b'\n');
            let header = String::from_utf8_lossy(lines.next().unwrap_or_default());
            let expected = format!("{HEADER} {client_id} {count}");
            if header != expected {
                return Err(fail(format!(
                    "it is for another stream ({header:?}, not {expected:?}); resume with the \
                     same n, or use another client id"
                )));
            }
            for (index, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
                let parsed = std::str::from_utf8(line).ok().and_then(|l| {
                    let (position, number) = l.split_once(' ')?;
                    Some((position.parse::<u32>().ok()?, number.parse::<u32>().ok()?))
                });
                let Some((position, number)) = parsed.filter(|&(p, _)| p < count) else {
                    return Err(fail(format!("line {} is damaged", index + 2)));
                };
                match numbers[position as usize] {
                    None => {
                        numbers[position as usize] = Some(number);
                        received += 1;
                    }
                    Some(known) if known == number => {}
                    Some(known) => {
                        return Err(fail(format!(
                            "position {position} holds {known} and {number}"
                        )));
                    }
                }
            }
        }
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail(format!("cannot open it for writing: {e}")))?;
        match (&existing, complete) {
            (Some(bytes), Some(complete)) if complete < bytes.len() => journal
                .set_len(complete as u64)
                .map_err(|e| fail(format!("cannot repair it: {e}")))?,
            (Some(_), _) => {}
            (None, _) => writeln!(journal, "{HEADER} {client_id} {count}")
                .map_err(|e| fail(format!("cannot write it: {e}")))?,
        }
        Ok(StreamState {
            path,
            client_id: client_id.to_owned(),
            numbers,
            received,
            journal,
            unwritten: Vec::new(),
            sync,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn count(&self) -> u32 {
        self.numbers.len() as u32
    }

    /// How many distinct positions have arrived.
    pub fn received(&self) -> u32 {
        self.received
    }

    pub fn numbers(&self) -> &[Option<u32>] {
        &self.numbers
    }

    /// Takes in the number at `position`; it reaches the journal at the next [`flush`].
    ///
    /// [`flush`]: StreamState::flush
    pub fn record(&mut self, position: u32, number: u32) -> Result<Recorded, StreamError> {
        let Some(slot) = self.numbers.get_mut(position as usize) else {
            return Err(StreamError::Protocol(format!(
                "a number for position {position} of a stream of {}",
                self.numbers.len()
            )));
        };
        match *slot {
            Some(known) if known == number => Ok(Recorded::Again),
            Some(known) => Err(StreamError::State {
                path: self.path.clone(),
                what: format!(
                    "position {position} was {known} and the server now sends {number}: it no \
                     longer knows this stream (expired after --stream-ttl, or another data \
                     directory); remove the file or use another client id"
                ),
            }),
            None => {
                *slot = Some(number);
                self.received += 1;
                self.unwritten
                    .extend_from_slice(format!("{position} {number}\n").as_bytes());
                Ok(Recorded::New)
            }
        }
    }

    /// Writes what was recorded (and fsyncs with `sync`): call before acknowledging it.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.journal.write_all(&self.unwritten)?;
        self.unwritten.clear();
        if self.sync {
            self.journal.sync_data()?;
        }
        Ok(())
    }

    /// SHA-1 over the numbers in position order, if all have arrived.
    pub fn checksum(&self) -> Option<[u8; CHECKSUM_LEN]> {
        let numbers: Option<Vec<u32>> = self.numbers.iter().copied().collect();
        numbers.map(wire::checksum)
    }

    /// The stream is done: its state is no longer needed.
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// How to run a stream.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: String,
    pub client_id: String,
    pub count: u32,
    /// Where `{client-id}.state` lives.
    pub state_dir: PathBuf,
    /// fsync the journal before each acknowledgement (survives power loss, slower).
    pub sync: bool,
    /// Reconnections (with resume) after a lost connection, before giving up.
    pub retries: u32,
    /// Longest wait for a message from the server.
    pub timeout: Duration,
    /// Disconnect after this many new numbers (as a Ctrl-C would; for demonstrations and
    /// tests of resuming).
    pub stop_after: Option<u32>,
}

impl Options {
    pub fn new(addr: &str, client_id: &str, count: u32) -> Options {
        Options {
            addr: addr.to_owned(),
            client_id: client_id.to_owned(),
            count,
            state_dir: std::env::temp_dir(),
            sync: false,
            retries: 10,
            timeout: Duration::from_secs(10),
            stop_after: None,
        }
    }
}

/// Something worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Resuming from a state file that already holds `received` of the numbers.
    Resumed {
        path: PathBuf,
        received: u32,
        count: u32,
    },
    /// A number arrived for the first time.
    Number { position: u32, number: u32 },
    /// The checksum arrived and matched the numbers received.
    Checksum {
        position: u32,
        checksum: [u8; CHECKSUM_LEN],
    },
    /// The connection was lost; connecting again to resume.
    Reconnecting { error: String, attempt: u32 },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Resumed {
                path,
                received,
                count,
            } => write!(
                f,
                "resumed from {}: {received} of {count} numbers already received",
                path.display()
            ),
            Event::Number { position, number } => write!(f, "[{position}] number: {number}"),
            Event::Checksum { position, checksum } => {
                write!(f, "[{position}] checksum: {}", hex(checksum))
            }
            Event::Reconnecting { error, attempt } => {
                write!(f, "connection lost ({error}); resuming (attempt {attempt})")
            }
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every number arrived and the checksum matched; the state file is removed.
    Verified { checksum: [u8; CHECKSUM_LEN] },
    /// Stopped by `stop` or `stop_after`; the state file is kept for a resume.
    Interrupted,
}

/// Runs (or resumes) the stream until it is verified, `stop` is set, or it fails.
pub fn run(
    options: &Options,
    stop: &AtomicBool,
    mut on_event: impl FnMut(Event),
) -> Result<Outcome, StreamError> {
    let mut state = StreamState::open(
        &options.state_dir,
        &options.client_id,
        options.count,
        options.sync,
    )?;
    if state.received() > 0 {
        on_event(Event::Resumed {
            path: state.path().to_owned(),
            received: state.received(),
            count: state.count(),
        });
    }
    let mut new_numbers = 0;
    let mut attempt = 0;
    loop {
        match session(options, &mut state, stop, &mut new_numbers, &mut on_event) {
            Ok(Outcome::Verified { checksum }) => {
                state.remove()?;
                return Ok(Outcome::Verified { checksum });
            }
            Ok(Outcome::Interrupted) => {
                state.flush()?;
                return Ok(Outcome::Interrupted);
            }
            Err(error) if error.is_transient() && attempt < options.retries => {
                state.flush()?;
                attempt += 1;
                on_event(Event::Reconnecting {
                    error: error.to_string(),
                    attempt,
                });
                let backoff = Duration::from_millis(100 << attempt.min(4));
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if stop.load(Ordering::Acquire) {
                        return Ok(Outcome::Interrupted);
                    }
                    std::thread::sleep(POLL.min(backoff));
                }
            }
            Err(error) => {
                state.flush()?;
                return Err(error);
            }
        }
    }
}

/// One connection: CON, then numbers in and acknowledgements out until the checksum.
fn session(
    options: &Options,
    state: &mut StreamState,
    stop: &AtomicBool,
    new_numbers: &mut u32,
    on_event: &mut impl FnMut(Event),
) -> Result<Outcome, StreamError> {
    let addr = options.addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing")
    })?;
    let mut socket = TcpStream::connect_timeout(&addr, options.timeout)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(POLL))?;
    let mut out = Vec::with_capacity(4096);
    Message::Connect {
        count: state.count(),
        client_id: state.client_id().as_bytes(),
    }
    .encode(&mut out);
    socket.write_all(&out)?;
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_heard = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(Outcome::Interrupted);
        }
        let n = match socket.read(&mut buf) {
            Ok(0) => return Err(StreamError::Closed),
            Ok(n) => n,
            // A signal (Ctrl-C) interrupts the read: the stop flag is looked at above.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_heard.elapsed() > options.timeout {
                    return Err(StreamError::Silent(options.timeout));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        last_heard = Instant::now();
        input.extend_from_slice(&buf[..n]);
        out.clear();
        let mut pos = 0;
        let mut verified = None;
        loop {
            let message = match wire::decode(&input[pos..]) {
                Ok(ParseOk { message, consumed }) => {
                    pos += consumed;
                    message
                }
                Err(ParseError::Incomplete(_)) => break,
                Err(ParseError::Fatal(problem)) => {
                    return Err(StreamError::Protocol(problem.to_string()));
                }
            };
            match message {
                Message::Number { sequence, number } => {
                    if state.record(sequence, number)? == Recorded::New {
                        *new_numbers += 1;
                        on_event(Event::Number {
                            position: sequence,
                            number,
                        });
                    }
                    Message::Ack { sequence }.encode(&mut out);
                }
                Message::Checksum { sequence, checksum } => {
                    if sequence != state.count() {
                        return Err(StreamError::Protocol(format!(
                            "checksum at position {sequence} of a stream of {}",
                            state.count()
                        )));
                    }
                    let Some(computed) = state.checksum() else {
                        // Numbers are missing: they will be resent, and the checksum again.
                        continue;
                    };
                    let server: [u8; CHECKSUM_LEN] = checksum.try_into().map_err(|_| {
                        StreamError::Protocol(format!("a checksum of {} bytes", checksum.len()))
                    })?;
                    if server != computed {
                        return Err(StreamError::Mismatch { server, computed });
                    }
                    Message::Ack { sequence }.encode(&mut out);
                    verified = Some(server);
                    on_event(Event::Checksum {
                        position: sequence,
                        checksum: server,
                    });
                }
                other => {
                    return Err(StreamError::Protocol(format!("the server sent {other:?}")));
                }
            }
        }
        input.drain(..pos);
        // Numbers reach the journal before the server learns they arrived.
        state.flush()?;
        if options.stop_after.is_some_and(|k| *new_numbers >= k) {
            return Ok(Outcome::Interrupted);
        }
        socket.write_all(&out)?;
        if let Some(checksum) = verified {
            return Ok(Outcome::Verified { checksum });
        }
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StreamState::open(dir.path(), "c-1", 3, false).unwrap();
        assert_eq!(state.record(2, 30).unwrap(), Recorded::New);
        assert_eq!(state.record(0, 10).unwrap(), Recorded::New);
        assert_eq!(state.record(0, 10).unwrap(), Recorded::Again);
        assert!(state.record(0, 11).is_err(), "a conflicting resend");
        assert!(state.record(3, 1).is_err(), "out of range");
        state.flush().unwrap();
        drop(state);
        let text = std::fs::read_to_string(dir.path().join("c-1.state")).unwrap();
        assert_eq!(text, "seqd-stream-state 1 c-1 3\n2 30\n0 10\n");
        let mut state = StreamState::open(dir.path(), "c-1", 3, false).unwrap();
        assert_eq!(state.received(), 2);
        assert_eq!(state.checksum(), None);
        state.record(1, 20).unwrap();
        assert_eq!(state.checksum(), Some(wire::checksum([10, 20, 30])));
        state.flush().unwrap();
        state.remove().unwrap();
        assert!(!dir.path().join("c-1.state").exists());
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.state");
        std::fs::write(&path, "seqd-stream-state 1 c 3\n0 10\n1 2").unwrap();
        let mut state = StreamState::open(dir.path(), "c", 3, false).unwrap();
        assert_eq!(state.received(), 1);
        state.record(1, 20).unwrap();
        state.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "seqd-stream-state 1 c 3\n0 10\n1 20\n"
        );
        std::fs::write(&path, "seqd-stream-state 1 c 3\nx y\n0 1\n").unwrap();
        let err = StreamState::open(dir.path(), "c", 3, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 2 is damaged"), "{err}");
        let err = StreamState::open(dir.path(), "c", 4, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another stream"), "{err}");
        assert!(StreamState::open(dir.path(), "../x", 4, false).is_err());
    }
}
