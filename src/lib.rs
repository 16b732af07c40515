//! seqd: a sequence-number server. See README.md for the guarantees and docs/PROTOCOL.md for
//! the wire formats.

pub mod client;
pub mod config;
pub mod lease;
pub mod protocol;
pub mod sequence;
pub mod server;
pub mod service;
pub mod store;
pub mod stream;
pub mod stream_client;
