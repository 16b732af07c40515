//! seqd: a sequence-number server. See README.md for the guarantees, docs/PROTOCOL.md for
//! the wire formats and docs/ARCHITECTURE.md for the layers below (bottom to top).

// Counters, time, change numbers.
pub mod clock;
pub mod commits;
pub mod sequence;
// TLS material (PEM files, the crypto provider), for the server and the clients.
pub mod tls;
// Domain state machines.
pub mod lease;
pub mod stream;
// The shared records the domain is made of.
pub mod state;
// The disk.
pub mod store;
// Pure codecs.
pub mod protocol;
// Sessions, the executor, the stream hub.
pub mod service;
// I/O backends.
pub mod server;
// Clients, command line.
pub mod client;
pub mod cluster;
pub mod config;
pub mod stream_client;
