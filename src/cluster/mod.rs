//! Cluster mode: several seqd nodes, one leader, failover through etcd (docs/HA.md).
//!
//! - [`timing`]: the lease TTL, renewal interval and self-fencing deadline (pure).
//! - [`role`]: a node's role and its transitions (pure).
//! - [`etcd`]: the election and the fenced ceiling store, as etcd operations.
//! - [`records`]: leases and streams as etcd keys (pure).
//! - [`node`]: the runtime thread that runs them, and the store the persister writes to.
//! - `leader`: what a newly elected leader opens and serves.
//!
//! The etcd parts are built with the `cluster` feature only (they need protoc and tokio);
//! without it, `--etcd` is refused with how to get a build that has it.
//!
//! A node campaigns before it serves: only the leader opens its sequences, at the ceilings
//! the previous leaders committed, and issues only while its leadership deadline holds
//! (checked on every reservation). A leader that loses leadership never serves again in the
//! same process: it exits, and comes back as a standby when restarted.

#[cfg(not(feature = "cluster"))]
mod disabled;
#[cfg(feature = "cluster")]
pub mod etcd;
#[cfg(feature = "cluster")]
mod leader;
#[cfg(feature = "cluster")]
pub mod node;
#[cfg(feature = "cluster")]
pub mod records;
pub mod role;
pub mod timing;

#[cfg(not(feature = "cluster"))]
pub use disabled::ClusterNode;
#[cfg(feature = "cluster")]
pub use leader::open_sequences;
#[cfg(feature = "cluster")]
pub use node::{ClusterNode, EtcdCeilingStore, Leadership};

use timing::LeaseTiming;

/// What the command line says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node_id: u64,
    /// Where clients reach this node (written into the leader key).
    pub advertise: String,
    pub timing: LeaseTiming,
}
