//! Durable state: the state file's and the journal's formats, the data directory, recovery
//! and the persister that keeps every sequence's durable ceiling ahead of demand.

pub mod changes;
pub mod data_dir;
pub mod failpoint;
pub mod format;
pub mod journal;
pub mod persister;
pub mod recovery;
pub mod window;
