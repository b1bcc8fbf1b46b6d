//! The roles an instance holds: the single-leader duties (relay, each
//! projector, token upkeep) that one instance of a cluster performs at a
//! time, for status and metrics.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The relay's role (and the name its lock key is derived from).
pub const RELAY: &str = "relay";
/// The dashboard projector's role.
pub const DASHBOARD_PROJECTOR: &str = "projector-dashboard";
/// The OAuth token upkeep's role.
pub const UPKEEP: &str = "upkeep";
/// Every single-leader role, so that status and metrics list each one,
/// held or not.
pub const ALL: &[&str] = &[RELAY, DASHBOARD_PROJECTOR, UPKEEP];

/// The roles this instance holds now.
#[derive(Clone, Default)]
pub struct Roles(Arc<Mutex<BTreeSet<String>>>);

impl Roles {
    /// Records that `role` is held until the guard is dropped.
    pub fn hold(&self, role: &str) -> RoleGuard {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(role.to_owned());
        connections_metrics::ROLE_CHANGES.inc(&[role, "taken"]);
        tracing::info!(role, "role taken");
        RoleGuard { roles: self.clone(), role: role.to_owned() }
    }

    /// Whether `role` is held.
    pub fn holds(&self, role: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(role)
    }

    /// The roles held, sorted.
    pub fn held(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// A role held; dropping it gives the role up.
pub struct RoleGuard {
    roles: Roles,
    role: String,
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        self.roles.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.role);
        connections_metrics::ROLE_CHANGES.inc(&[&self.role, "released"]);
        tracing::info!(role = %self.role, "role released");
    }
}
