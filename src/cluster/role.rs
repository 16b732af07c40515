//! A node's role in the cluster and the transitions between roles. A leader never goes
//! back to standby in the same process: its event loops may hold numbers read before it
//! lost leadership, so a deposed leader exits and comes back (restarted by its supervisor)
//! as a fresh standby.

use std::fmt;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not yet talking to etcd, or between campaigns.
    Candidate,
    /// Another node leads (its advertised address, as written in the leader key).
    Standby { leader: String },
    /// This node leads; `token` is the leader key's create revision.
    Leader { token: i64 },
    /// Leadership lost (lease expired, fenced write refused): issues nothing, ever.
    Deposed { reason: String },
    /// Leadership given up on a graceful stop (lease revoked).
    Resigned,
}

/// What happened, as seen by the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleEvent {
    /// Campaign lost: `leader` holds the key.
    LeaderSeen {
        leader: String,
    },
    /// The leader key went away: campaign again.
    Vacancy,
    Elected {
        token: i64,
    },
    Lost {
        reason: String,
    },
    Resigned,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no transition from {from} on {event:?}")]
pub struct InvalidTransition {
    pub from: Role,
    pub event: RoleEvent,
}

impl Role {
    /// The role after `event`.
    pub fn after(&self, event: RoleEvent) -> Result<Role, InvalidTransition> {
        use RoleEvent as E;
        let next = match (self, &event) {
            (Role::Candidate | Role::Standby { .. }, E::LeaderSeen { leader }) => Role::Standby {
                leader: leader.clone(),
            },
            (Role::Candidate | Role::Standby { .. }, E::Vacancy) => Role::Candidate,
            (Role::Candidate, E::Elected { token }) => Role::Leader { token: *token },
            (Role::Leader { .. }, E::Lost { reason }) => Role::Deposed {
                reason: reason.clone(),
            },
            (Role::Leader { .. }, E::Resigned) => Role::Resigned,
            // Stopping while not leading, or a second report of the same loss.
            (Role::Candidate | Role::Standby { .. }, E::Resigned) => Role::Resigned,
            (Role::Deposed { .. }, E::Lost { .. } | E::Resigned) => self.clone(),
            _ => {
                return Err(InvalidTransition {
                    from: self.clone(),
                    event,
                });
            }
        };
        Ok(next)
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Candidate => write!(f, "candidate"),
            Role::Standby { leader } => write!(f, "standby (leader: {leader})"),
            Role::Leader { token } => write!(f, "leader (fencing token {token})"),
            Role::Deposed { reason } => write!(f, "deposed ({reason})"),
            Role::Resigned => write!(f, "resigned"),
        }
    }
}

/// The current role, shared by the election task, the ceiling store and the main thread.
#[derive(Debug)]
pub struct RoleCell(Mutex<Role>);

impl Default for RoleCell {
    fn default() -> Self {
        RoleCell(Mutex::new(Role::Candidate))
    }
}

impl RoleCell {
    pub fn get(&self) -> Role {
        self.lock().clone()
    }

    /// Applies `event`; an impossible transition is logged and leaves the role as it was
    /// (it is a bug, never a reason to start issuing).
    pub fn apply(&self, event: RoleEvent) -> Role {
        let mut role = self.lock();
        match role.after(event) {
            Ok(next) => {
                if next != *role {
                    tracing::info!("cluster role: {role} -> {next}");
                }
                *role = next;
            }
            Err(e) => tracing::error!("{e}"),
        }
        role.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Role> {
        // A role is replaced whole, so a poisoned lock still holds a consistent one.
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> RoleEvent {
        RoleEvent::Lost {
            reason: "lease expired".into(),
        }
    }

    #[test]
    fn a_candidate_becomes_standby_or_leader() {
        let standby = Role::Candidate
            .after(RoleEvent::LeaderSeen {
                leader: "h1:1".into(),
            })
            .unwrap();
        assert_eq!(
            standby,
            Role::Standby {
                leader: "h1:1".into()
            }
        );
        let candidate = standby.after(RoleEvent::Vacancy).unwrap();
        let leader = candidate.after(RoleEvent::Elected { token: 7 }).unwrap();
        assert_eq!(leader, Role::Leader { token: 7 });
        assert!(leader.is_leader());
    }

    #[test]
    fn a_standby_must_campaign_before_leading() {
        let standby = Role::Standby {
            leader: "h1:1".into(),
        };
        assert!(standby.after(RoleEvent::Elected { token: 1 }).is_err());
    }

    #[test]
    fn a_deposed_leader_never_leads_or_stands_by_again() {
        let deposed = Role::Leader { token: 3 }.after(lost()).unwrap();
        assert!(matches!(deposed, Role::Deposed { .. }));
        assert!(deposed.after(RoleEvent::Elected { token: 9 }).is_err());
        assert!(deposed.after(RoleEvent::Vacancy).is_err());
        assert!(
            deposed
                .after(RoleEvent::LeaderSeen {
                    leader: "h2:2".into()
                })
                .is_err()
        );
        assert_eq!(deposed.after(lost()).unwrap(), deposed, "reported twice");
    }

    #[test]
    fn a_resigned_leader_is_done() {
        let resigned = Role::Leader { token: 3 }
            .after(RoleEvent::Resigned)
            .unwrap();
        assert_eq!(resigned, Role::Resigned);
        assert!(resigned.after(RoleEvent::Elected { token: 4 }).is_err());
    }

    #[test]
    fn an_invalid_event_leaves_the_cell_unchanged() {
        let cell = RoleCell::default();
        cell.apply(RoleEvent::Elected { token: 5 });
        assert_eq!(cell.apply(RoleEvent::Vacancy), Role::Leader { token: 5 });
    }
}
