//! Durable state: the state file's format, the data directory, recovery and the persister
//! that keeps every sequence's durable ceiling ahead of demand.

pub mod data_dir;
pub mod format;
pub mod persister;
pub mod recovery;
pub mod window;
