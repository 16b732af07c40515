//! seqd's load generator: see `loadgen --help` and the "Load generator" section of README.md.

pub mod hgrm;
pub mod schedule;
pub mod slo;
pub mod target;
pub mod verify;
