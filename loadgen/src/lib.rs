//! seqd's load generator: see `loadgen --help` and the "Load generator" section of README.md.

pub mod baseline;
pub mod clock;
pub mod failover;
pub mod hgrm;
pub mod hold;
pub mod inprocess;
pub mod merge;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod search;
pub mod slo;
pub mod target;
pub mod tls;
pub mod verify;
pub mod worker;
pub mod zero_work;
