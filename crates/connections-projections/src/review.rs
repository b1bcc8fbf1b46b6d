//! The hygiene review: the product page's best practices checked against one
//! owner's active connections. The facts come from the read models, the
//! credential hygiene table (fingerprints, seal and expiry times) and the
//! access log, all read as `connections_reader` under row-level security;
//! the findings are a pure function of those facts and the thresholds.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use connections_store::{Database, StoreError};
use serde::Serialize;
use uuid::Uuid;

use crate::queries::scoped;

/// Thresholds of the review, each with the product page's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// A connection not handed out for this many days is unused.
    pub unused_days: u32,
    /// A connection bound to more agents than this is shared.
    pub max_agents: u32,
    /// A credential not rotated for this many days is old.
    pub old_days: u32,
    /// An OAuth access token expiring within this many hours is expiring.
    pub expiring_hours: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { unused_days: 30, max_agents: 3, old_days: 90, expiring_hours: 24 }
    }
}

/// What the review knows of one active connection (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// The connection.
    pub connection_id: Uuid,
    /// Its service.
    pub service: String,
    /// Its name.
    pub name: String,
    /// Whether it is its service's default (agents without a binding get it).
    pub is_default: bool,
    /// Agents bound to it.
    pub agent_count: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its current credential was sealed (`None` for connections
    /// sealed before the hygiene table existed: then `created_at` stands in).
    pub sealed_at: Option<DateTime<Utc>>,
    /// When its OAuth access token expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
    /// Keyed fingerprints of its secret values (compared, never shown).
    pub fingerprints: Vec<Vec<u8>>,
    /// Its last hand-out to an agent, if any.
    pub last_handout: Option<DateTime<Utc>>,
    /// Whether a runtime reported that the provider rejected its credential.
    pub needs_attention: bool,
}

/// The kinds of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A runtime reported that the provider rejected the credential.
    Rejected,
    /// The OAuth access token has expired.
    Expired,
    /// The OAuth access token expires soon.
    Expiring,
    /// Another of the owner's connections holds the same secret.
    DuplicateSecret,
    /// Bound to more agents than the threshold.
    Shared,
    /// Not rotated for longer than the threshold.
    Old,
    /// No agent bound (and not the default), or not handed out for longer
    /// than the threshold.
    Unused,
}

/// One finding: the connection, why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The connection.
    pub connection_id: Uuid,
    /// Its service.
    pub service: String,
    /// Its name.
    pub name: String,
    /// What kind of finding.
    pub kind: FindingKind,
    /// Why, in words.
    pub reason: String,
    /// The suggested action, in words.
    pub action: String,
    /// Other connections involved (for duplicate secrets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Uuid>,
}

/// The findings for `facts` at `now`, most urgent kinds first, then by
/// service, name and id.
pub fn findings(facts: &[ConnectionFacts], thresholds: &Thresholds, now: DateTime<Utc>) -> Vec<Finding> {
    let mut holders: BTreeMap<&[u8], Vec<Uuid>> = BTreeMap::new();
    for connection in facts {
        for fingerprint in &connection.fingerprints {
            let ids = holders.entry(fingerprint.as_slice()).or_default();
            if !ids.contains(&connection.connection_id) {
                ids.push(connection.connection_id);
            }
        }
    }
    let mut out = Vec::new();
    for c in facts {
        let mut add = |kind, reason: String, action: &str, related: Vec<Uuid>| {
            out.push(Finding {
                connection_id: c.connection_id,
                service: c.service.clone(),
                name: c.name.clone(),
                kind,
                reason,
                action: action.to_owned(),
                related,
            })
        };
        if c.needs_attention {
            add(
                FindingKind::Rejected,
                "an agent reported that the provider rejected its credential".to_owned(),
                "replace it with a new credential (or rotate it); revoke it if it is no longer needed",
                vec![],
            );
        }
        if let Some(expires_at) = c.expires_at {
            if expires_at <= now {
                add(
                    FindingKind::Expired,
                    format!("its OAuth access token expired {} ago", span(now - expires_at)),
                    "reconnect or rotate it with fresh tokens; agents are handed a dead token until then",
                    vec![],
                );
            } else if expires_at - now <= Duration::hours(i64::from(thresholds.expiring_hours)) {
                add(
                    FindingKind::Expiring,
                    format!("its OAuth access token expires in {}", span(expires_at - now)),
                    "rotate it with fresh tokens before it expires",
                    vec![],
                );
            }
        }
        let mut related: Vec<Uuid> = c
            .fingerprints
            .iter()
            .flat_map(|f| holders[f.as_slice()].iter().copied())
            .filter(|id| *id != c.connection_id)
            .collect();
        related.sort();
        related.dedup();
        if !related.is_empty() {
            let count = related.len();
            add(
                FindingKind::DuplicateSecret,
                format!(
                    "it uses the same secret as {count} other connection{} of yours",
                    if count == 1 { "" } else { "s" }
                ),
                "replace it with a secret of its own: one leak would compromise every copy",
                related,
            );
        }
        if c.agent_count > i32::try_from(thresholds.max_agents).unwrap_or(i32::MAX) {
            add(
                FindingKind::Shared,
                format!("{} agents use it (more than {})", c.agent_count, thresholds.max_agents),
                "give each agent a connection of its own, so one can be revoked without stopping the others",
                vec![],
            );
        }
        let sealed_at = c.sealed_at.unwrap_or(c.created_at);
        if now - sealed_at > Duration::days(i64::from(thresholds.old_days)) {
            add(
                FindingKind::Old,
                format!("its credential has not been rotated for {}", span(now - sealed_at)),
                "rotate the credential",
                vec![],
            );
        }
        let unused_for = Duration::days(i64::from(thresholds.unused_days));
        let idle = match c.last_handout {
            Some(last) if now - last > unused_for => {
                Some(format!("no agent has been handed it for {}", span(now - last)))
            }
            None if now - c.created_at > unused_for => {
                Some(format!("no agent has been handed it since it was created {} ago", span(now - c.created_at)))
            }
            _ => None,
        };
        let unbound = (c.agent_count == 0 && !c.is_default).then(|| "no agent is bound to it".to_owned());
        let reasons: Vec<String> = unbound.into_iter().chain(idle).collect();
        if !reasons.is_empty() {
            add(FindingKind::Unused, reasons.join("; "), "revoke it if it is no longer needed", vec![]);
        }
    }
    out.sort_by(|a, b| {
        (a.kind, &a.service, &a.name, a.connection_id).cmp(&(b.kind, &b.service, &b.name, b.connection_id))
    });
    out
}

/// A duration in words, to the largest whole unit.
fn span(duration: Duration) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if duration.num_days() >= 1 {
        plural(duration.num_days(), "day")
    } else if duration.num_hours() >= 1 {
        plural(duration.num_hours(), "hour")
    } else {
        plural(duration.num_minutes().max(1), "minute")
    }
}

/// An owner's review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// When it was computed.
    pub reviewed_at: DateTime<Utc>,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// How many active connections were reviewed.
    pub connections_reviewed: usize,
    /// The findings.
    pub findings: Vec<Finding>,
}

/// Reads `owner`'s facts (as `connections_reader`, under row-level
/// security) and reviews them at the database's current time.
pub async fn review(database: &Database, owner: &str, thresholds: &Thresholds) -> Result<Review, StoreError> {
    let mut client = database.pool().get().await?;
    let transaction = scoped(&mut client, owner).await?;
    let rows = transaction
        .query(
            "SELECT c.connection_id, c.service, c.name, c.is_default, c.agent_count, c.created_at, \
                    h.sealed_at, h.expires_at, coalesce(h.fingerprints, '{}'), \
                    (SELECT a.accessed_at FROM access_log a WHERE a.connection_id = c.connection_id \
                     ORDER BY a.access_id DESC LIMIT 1), \
                    statement_timestamp(), c.needs_attention \
             FROM rm_connections c LEFT JOIN credential_hygiene h ON h.connection_id = c.connection_id \
             WHERE c.owner_id = $1 AND c.status = 'active' ORDER BY c.service, c.created_at",
            &[&owner],
        )
        .await?;
    let now: DateTime<Utc> = match rows.first() {
        Some(row) => row.get(10),
        None => transaction.query_one("SELECT statement_timestamp()", &[]).await?.get(0),
    };
    transaction.commit().await?;
    let facts: Vec<ConnectionFacts> = rows
        .iter()
        .map(|row| ConnectionFacts {
            connection_id: row.get(0),
            service: row.get(1),
            name: row.get(2),
            is_default: row.get(3),
            agent_count: row.get(4),
            created_at: row.get(5),
            sealed_at: row.get(6),
            expires_at: row.get(7),
            fingerprints: row.get(8),
            last_handout: row.get(9),
            needs_attention: row.get(11),
        })
        .collect();
    Ok(Review {
        reviewed_at: now,
        thresholds: *thresholds,
        connections_reviewed: facts.len(),
        findings: findings(&facts, thresholds, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - Duration::days(days_ago)
    }

    fn fresh(n: u128, now: DateTime<Utc>) -> ConnectionFacts {
        ConnectionFacts {
            connection_id: Uuid::from_u128(n),
            service: "github".into(),
            name: format!("c{n}"),
            is_default: false,
            agent_count: 1,
            created_at: at(1, now),
            sealed_at: Some(at(1, now)),
            expires_at: None,
            fingerprints: vec![vec![n as u8; 32]],
            last_handout: Some(at(0, now)),
            needs_attention: false,
        }
    }

    fn kinds(findings: &[Finding]) -> Vec<(u128, FindingKind)> {
        findings.iter().map(|f| (f.connection_id.as_u128(), f.kind)).collect()
    }

    #[test]
    fn a_healthy_connection_has_no_findings() {
        let now = Utc::now();
        assert_eq!(findings(&[fresh(1, now)], &Thresholds::default(), now), vec![]);
    }

    #[test]
    fn each_practice_is_checked_against_its_threshold() {
        let now = Utc::now();
        let t = Thresholds::default();
        let unbound = ConnectionFacts { agent_count: 0, ..fresh(1, now) };
        let unbound_default = ConnectionFacts { agent_count: 0, is_default: true, ..fresh(2, now) };
        let idle = ConnectionFacts { last_handout: Some(at(31, now)), ..fresh(3, now) };
        let never_used = ConnectionFacts { last_handout: None, created_at: at(40, now), ..fresh(4, now) };
        let new_never_used = ConnectionFacts { last_handout: None, ..fresh(5, now) };
        let shared = ConnectionFacts { agent_count: 4, ..fresh(6, now) };
        let at_limit = ConnectionFacts { agent_count: 3, ..fresh(7, now) };
        let old = ConnectionFacts { sealed_at: Some(at(91, now)), created_at: at(200, now), ..fresh(8, now) };
        let legacy_old = ConnectionFacts { sealed_at: None, created_at: at(100, now), ..fresh(9, now) };
        let expired = ConnectionFacts { expires_at: Some(now - Duration::minutes(5)), ..fresh(10, now) };
        let expiring = ConnectionFacts { expires_at: Some(now + Duration::hours(23)), ..fresh(11, now) };
        let later = ConnectionFacts { expires_at: Some(now + Duration::hours(25)), ..fresh(12, now) };
        let rejected = ConnectionFacts { needs_attention: true, ..fresh(13, now) };
        let facts = [
            unbound,
            unbound_default,
            idle,
            never_used,
            new_never_used,
            shared,
            at_limit,
            old,
            legacy_old,
            expired,
            expiring,
            later,
            rejected,
        ];
        let mut got = kinds(&findings(&facts, &t, now));
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, FindingKind::Unused),
                (3, FindingKind::Unused),
                (4, FindingKind::Unused),
                (6, FindingKind::Shared),
                (8, FindingKind::Old),
                (9, FindingKind::Old),
                (10, FindingKind::Expired),
                (11, FindingKind::Expiring),
                (13, FindingKind::Rejected),
            ]
        );
        let strict = Thresholds { unused_days: 1, max_agents: 0, old_days: 365, expiring_hours: 48 };
        let got = kinds(&findings(&facts[..1], &strict, now));
        assert_eq!(got, vec![(1, FindingKind::Unused)], "agent count 0 is not more than 0");
        let got = kinds(&findings(&facts[11..12], &strict, now));
        assert!(got.contains(&(12, FindingKind::Expiring)) && got.contains(&(12, FindingKind::Shared)), "{got:?}");
    }

    #[test]
    fn duplicate_secrets_name_each_other_and_never_show_the_fingerprint() {
        let now = Utc::now();
        let a = ConnectionFacts { fingerprints: vec![vec![7; 32], vec![1; 32]], ..fresh(1, now) };
        let b = ConnectionFacts { fingerprints: vec![vec![7; 32]], ..fresh(2, now) };
        let c = ConnectionFacts { fingerprints: vec![vec![9; 32]], ..fresh(3, now) };
        let found = findings(&[a, b, c], &Thresholds::default(), now);
        assert_eq!(kinds(&found), vec![(1, FindingKind::DuplicateSecret), (2, FindingKind::DuplicateSecret)]);
        assert_eq!(found[0].related, vec![Uuid::from_u128(2)]);
        assert_eq!(found[1].related, vec![Uuid::from_u128(1)]);
        let text = serde_json::to_string(&found).expect("serializes");
        assert!(!text.contains("7,7,7") && !text.contains("0707"), "{text}");
    }
}
