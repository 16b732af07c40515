//! Cluster mode in a build without the `cluster` feature: no node can exist, and asking for
//! one says how to get a build that has it.

use super::ClusterSettings;
use super::role::Role;

/// A cluster node, which this build cannot have (the type has no values).
pub enum ClusterNode {}

impl ClusterNode {
    pub fn connect(_settings: ClusterSettings) -> anyhow::Result<ClusterNode> {
        anyhow::bail!(
            "this seqd was built without cluster mode, so --etcd cannot be used; rebuild with \
             `cargo build --release --features cluster` (needs protoc: apt-get install \
             protobuf-compiler)"
        )
    }

    pub fn resign(&self) {
        match *self {}
    }

    pub fn stop_issuing(&self) {
        match *self {}
    }

    pub fn is_deposed(&self) -> bool {
        match *self {}
    }

    pub fn role(&self) -> Role {
        match *self {}
    }
}
