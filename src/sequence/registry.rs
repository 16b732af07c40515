//! The set of sequences a server serves, looked up by id (lock-free) or by name.
//!
//! Sequences are created on first use, up to a fixed bound, so a client cannot exhaust memory
//! by inventing names. Ids are dense indexes into a table allocated once; looking a sequence up
//! by id is a single atomic load. Name lookups take a mutex and are meant to be cached by the
//! caller (each event loop keeps its own name → id map).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{
    DEFAULT_NAME, DEFAULT_SEQUENCE, END_OF_SPACE, IssueDeadline, PersisterSignals, Sequence,
    SequenceId, Writers,
};

/// Longest accepted sequence name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("sequence name is empty")]
    Empty,
    #[error("sequence name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("sequence name may contain only letters, digits and _ . : -")]
    BadCharacter,
}

/// Why a sequence could not be found or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("too many sequences: the limit is {limit} (raise it with --max-sequences)")]
    TooManySequences { limit: u32 },
}

/// A sequence as recovered from durable state: where it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSequence {
    pub id: SequenceId,
    pub name: String,
    /// The first number it may issue: nothing at or above it was issued before.
    pub resume_at: u64,
}

/// Why recovered sequences cannot form a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    #[error(
        "the state holds {count} sequences but --max-sequences is {limit}: \
         raise --max-sequences to at least {count}"
    )]
    TooManySequences { count: usize, limit: u32 },
    #[error(
        "sequence ids must be 0, 1, 2, ... in order; found id {found} where {expected} belongs"
    )]
    IdsNotDense {
        expected: SequenceId,
        found: SequenceId,
    },
    #[error("sequence 0 must be {DEFAULT_NAME:?}, found {found:?}")]
    DefaultMissing { found: String },
    #[error("sequence name {name:?} appears twice")]
    DuplicateName { name: String },
    #[error("sequence {name:?}: {error}")]
    InvalidName { name: String, error: NameError },
    #[error("sequence {name:?} resumes at {resume_at}, beyond the number space")]
    BeyondNumberSpace { name: String, resume_at: u64 },
}

/// Checks a client-supplied sequence name and returns it as text.
pub fn validate_name(name: &[u8]) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(NameError::BadCharacter);
    }
    // Only ASCII passed the check above.
    std::str::from_utf8(name).map_err(|_| NameError::BadCharacter)
}

#[derive(Debug)]
pub struct Registry {
    slots: Box<[OnceLock<Box<Sequence>>]>,
    names: Mutex<HashMap<Box<str>, SequenceId>>,
    /// First number of a sequence created at run time.
    initial: u64,
    /// Ceiling of a sequence created at run time: the end of the number space in memory-only
    /// mode; `initial` (nothing issuable) when a store must first make a ceiling durable.
    durable: bool,
    /// Who may reserve from its sequences (see [`Writers`]).
    writers: Writers,
    /// Cluster mode: the leadership deadline every sequence issues under.
    deadline: Option<Arc<IssueDeadline>>,
    signals: PersisterSignals,
}

impl Registry {
    /// A memory-only registry holding the default sequence, with room for `max_sequences`
    /// in all. Every number is issuable at once.
    pub fn new(max_sequences: u32, initial: u64) -> Registry {
        Registry::with_mode(max_sequences, initial, false)
    }

    /// Like [`Registry::new`], but a sequence issues nothing until its ceiling is raised
    /// (by whoever persists it).
    pub fn durable(max_sequences: u32, initial: u64) -> Registry {
        Registry::with_mode(max_sequences, initial, true)
    }

    /// A durable registry holding the recovered sequences, each beginning at its resume
    /// point with nothing issuable until its ceiling is raised. `recovered` must hold the
    /// default sequence as id 0 and dense ids in order; when it is empty (a fresh data
    /// directory) the default sequence begins at `initial`.
    pub fn recovered(
        max_sequences: u32,
        initial: u64,
        recovered: &[RecoveredSequence],
    ) -> Result<Registry, RebuildError> {
        if recovered.len() > max_sequences as usize {
            return Err(RebuildError::TooManySequences {
                count: recovered.len(),
                limit: max_sequences,
            });
        }
        if recovered.is_empty() {
            return Ok(Registry::durable(max_sequences, initial));
        }
        if recovered[0].name != DEFAULT_NAME {
            return Err(RebuildError::DefaultMissing {
                found: recovered[0].name.clone(),
            });
        }
        let registry = Registry::empty(max_sequences, initial, true);
        {
            let mut names = registry.lock_names();
            for (index, sequence) in recovered.iter().enumerate() {
                let expected = index as SequenceId;
                if sequence.id != expected {
                    return Err(RebuildError::IdsNotDense {
                        expected,
                        found: sequence.id,
                    });
                }
                let name = &sequence.name;
                validate_name(name.as_bytes()).map_err(|error| RebuildError::InvalidName {
                    name: name.clone(),
                    error,
                })?;
                if sequence.resume_at > END_OF_SPACE {
                    return Err(RebuildError::BeyondNumberSpace {
                        name: name.clone(),
                        resume_at: sequence.resume_at,
                    });
                }
                if names.insert(name.as_str().into(), expected).is_some() {
                    return Err(RebuildError::DuplicateName { name: name.clone() });
                }
                let at = sequence.resume_at;
                registry.slots[index]
                    .get_or_init(|| Box::new(Sequence::new(expected, name, at, at)));
            }
        }
        Ok(registry)
    }

    fn with_mode(max_sequences: u32, initial: u64, durable: bool) -> Registry {
        let registry = Registry::empty(max_sequences, initial, durable);
        registry.insert(DEFAULT_SEQUENCE, DEFAULT_NAME);
        registry
    }

    fn empty(max_sequences: u32, initial: u64, durable: bool) -> Registry {
        assert!(max_sequences >= 1, "the default sequence needs a slot");
        Registry {
            slots: (0..max_sequences).map(|_| OnceLock::new()).collect(),
            names: Mutex::new(HashMap::new()),
            initial,
            durable,
            writers: Writers::Many,
            deadline: None,
            signals: PersisterSignals::default(),
        }
    }

    /// Declares who reserves from this registry's sequences, those that exist and those
    /// created later. [`Writers::One`] only when a single thread will ever reserve (seqd with
    /// one event loop): a second one would issue numbers twice (debug builds panic).
    pub fn with_writers(mut self, writers: Writers) -> Registry {
        self.writers = writers;
        for slot in self.slots.iter_mut() {
            if let Some(sequence) = slot.get_mut() {
                sequence.set_writers(writers);
            }
        }
        self
    }

    /// Cluster mode: every sequence, existing and created later, issues numbers only before
    /// `deadline`, and a request refused after it is refused as unavailable (not queued).
    pub fn with_issue_deadline(mut self, deadline: Arc<IssueDeadline>) -> Registry {
        for slot in self.slots.iter_mut() {
            if let Some(sequence) = slot.get_mut() {
                sequence.set_deadline(deadline.clone());
            }
        }
        self.signals.set_issue_deadline(deadline.clone());
        self.deadline = Some(deadline);
        self
    }

    /// Whether numbers need a durable ceiling (false: memory only, every number issuable).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Where a sequence created from now on begins.
    pub fn initial(&self) -> u64 {
        self.initial
    }

    /// The link between the loops and whoever raises ceilings.
    #[inline]
    pub fn persister_signals(&self) -> &PersisterSignals {
        &self.signals
    }

    /// The sequence with this id, if it exists. Lock-free.
    #[inline]
    pub fn get(&self, id: SequenceId) -> Option<&Sequence> {
        self.slots.get(id as usize)?.get().map(|s| &**s)
    }

    /// The sequence with this name, created if it does not exist yet.
    pub fn resolve(&self, name: &[u8]) -> Result<&Sequence, RegistryError> {
        let name = validate_name(name)?;
        let mut names = self.lock_names();
        let id = match names.get(name) {
            Some(&id) => id,
            None => {
                let id = names.len() as SequenceId;
                if id as usize >= self.slots.len() {
                    return Err(RegistryError::TooManySequences {
                        limit: self.slots.len() as u32,
                    });
                }
                names.insert(name.into(), id);
                id
            }
        };
        Ok(self.slot(id, name))
    }

    /// The sequence with this name, if it exists; never creates one (reads must not fill
    /// `--max-sequences`).
    pub fn find(&self, name: &[u8]) -> Result<Option<&Sequence>, RegistryError> {
        let name = validate_name(name)?;
        let id = self.lock_names().get(name).copied();
        Ok(id.and_then(|id| self.get(id)))
    }

    /// Every sequence that exists, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Sequence> {
        self.slots.iter().map_while(|slot| slot.get().map(|s| &**s))
    }

    pub fn len(&self) -> usize {
        self.lock_names().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    fn insert(&self, id: SequenceId, name: &str) {
        self.lock_names().insert(name.into(), id);
        self.slot(id, name);
    }

    /// The sequence in slot `id`, created with `name` if the slot is empty.
    fn slot(&self, id: SequenceId, name: &str) -> &Sequence {
        let ceiling = if self.durable {
            self.initial
        } else {
            END_OF_SPACE
        };
        self.slots[id as usize].get_or_init(|| {
            let mut sequence = Sequence::new(id, name, self.initial, ceiling);
            sequence.set_writers(self.writers);
            if let Some(deadline) = &self.deadline {
                sequence.set_deadline(deadline.clone());
            }
            Box::new(sequence)
        })
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, SequenceId>> {
        // A panic while holding this lock cannot leave the map half-updated (single insert),
        // so a poisoned lock is still consistent.
        self.names
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sequence_exists() {
        let r = Registry::new(4, 7);
        let d = r.get(DEFAULT_SEQUENCE).unwrap();
        assert_eq!(d.name(), DEFAULT_NAME);
        assert_eq!(d.current(), 7);
        assert_eq!(r.resolve(b"default").unwrap().id(), DEFAULT_SEQUENCE);
    }

    #[test]
    fn names_create_once_and_resolve_to_the_same_id() {
        let r = Registry::new(4, 1);
        let a = r.resolve(b"orders").unwrap().id();
        let b = r.resolve(b"events").unwrap().id();
        assert_ne!(a, b);
        assert_eq!(r.resolve(b"orders").unwrap().id(), a);
        assert_eq!(r.get(a).unwrap().name(), "orders");
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().count(), 3);
    }

    #[test]
    fn bound_is_enforced() {
        let r = Registry::new(2, 1);
        r.resolve(b"one").unwrap();
        assert_eq!(
            r.resolve(b"two").unwrap_err(),
            RegistryError::TooManySequences { limit: 2 }
        );
        assert!(r.get(2).is_none());
        // Existing names still resolve once the table is full.
        assert!(r.resolve(b"one").is_ok());
    }

    fn rec(id: SequenceId, name: &str, resume_at: u64) -> RecoveredSequence {
        RecoveredSequence {
            id,
            name: name.into(),
            resume_at,
        }
    }

    #[test]
    fn recovered_sequences_resume_with_nothing_issuable() {
        let r = Registry::recovered(4, 1, &[rec(0, "default", 500), rec(1, "orders", 70)]).unwrap();
        assert!(r.is_durable());
        let orders = r.resolve(b"orders").unwrap();
        assert_eq!(
            (orders.id(), orders.current(), orders.ceiling()),
            (1, 70, 70)
        );
        assert_eq!(
            orders.reserve(1),
            Err(crate::sequence::Refusal::AwaitingCeiling)
        );
        assert_eq!(r.get(0).unwrap().current(), 500);
        // A new name takes the next id and begins at `initial`, nothing issuable.
        let events = r.resolve(b"events").unwrap();
        assert_eq!((events.id(), events.current(), events.ceiling()), (2, 1, 1));
    }

    #[test]
    fn empty_recovery_is_a_fresh_durable_registry() {
        let r = Registry::recovered(4, 9, &[]).unwrap();
        let d = r.get(DEFAULT_SEQUENCE).unwrap();
        assert_eq!((d.name(), d.current(), d.ceiling()), (DEFAULT_NAME, 9, 9));
    }

    #[test]
    fn inconsistent_recoveries_are_refused() {
        let cases = [
            (vec![rec(0, "orders", 1)], "must be \"default\""),
            (vec![rec(0, "default", 1), rec(2, "x", 1)], "ids must be"),
            (vec![rec(0, "default", 1), rec(1, "default", 1)], "twice"),
            (
                vec![rec(0, "default", 1), rec(1, "a b", 1)],
                "may contain only",
            ),
            (vec![rec(0, "default", u64::MAX)], "beyond the number space"),
            (
                vec![rec(0, "default", 1), rec(1, "a", 1), rec(2, "b", 1)],
                "--max-sequences",
            ),
        ];
        for (recovered, expected) in cases {
            let err = Registry::recovered(2, 1, &recovered)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn names_are_validated() {
        let r = Registry::new(4, 1);
        assert_eq!(r.resolve(b"").unwrap_err(), NameError::Empty.into());
        assert_eq!(
            r.resolve(&[b'a'; 65]).unwrap_err(),
            NameError::TooLong.into()
        );
        assert_eq!(
            r.resolve(b"a b").unwrap_err(),
            NameError::BadCharacter.into()
        );
        assert_eq!(
            r.resolve("é".as_bytes()).unwrap_err(),
            NameError::BadCharacter.into()
        );
        assert!(r.resolve(b"tx.ids:eu-west_1").is_ok());
    }
}
