//! `connections review --owner USER [--json]`: the hygiene review of one
//! owner's connections, as `GET /v1/review` answers it (same query, same
//! row-level security), for operators and scripts.

use connections_domain::OwnerId;
use connections_projections::review::{review, Thresholds};

/// Options of `connections review`.
#[derive(clap::Args)]
pub struct ReviewOptions {
    /// The owner whose connections are reviewed.
    #[arg(long)]
    owner: String,
    /// Print the answer of `GET /v1/review` (JSON) instead of text.
    #[arg(long)]
    json: bool,
    /// A connection not handed out for more days than this is unused.
    #[arg(long, default_value_t = Thresholds::default().unused_days, value_parser = clap::value_parser!(u32).range(1..=3650))]
    unused_days: u32,
    /// A connection bound to more agents than this is shared.
    #[arg(long, default_value_t = Thresholds::default().max_agents, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_agents: u32,
    /// A credential not rotated for more days than this is old.
    #[arg(long, default_value_t = Thresholds::default().old_days, value_parser = clap::value_parser!(u32).range(1..=3650))]
    old_days: u32,
    /// An OAuth access token expiring within this many hours is expiring.
    #[arg(long, default_value_t = Thresholds::default().expiring_hours, value_parser = clap::value_parser!(u32).range(1..=8760))]
    expiring_hours: u32,
}

/// Runs the review against `database_url` and prints it.
pub async fn run(options: ReviewOptions, database_url: &str) -> anyhow::Result<()> {
    let owner = OwnerId::parse(options.owner).map_err(|e| anyhow::anyhow!("--owner {e}"))?;
    let thresholds = Thresholds {
        unused_days: options.unused_days,
        max_agents: options.max_agents,
        old_days: options.old_days,
        expiring_hours: options.expiring_hours,
    };
    let database = connections_store::connect_pool(database_url, 1)?;
    let answer = review(&database, owner.as_str(), &thresholds).await?;
    if options.json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    println!(
        "review of {owner}'s {} active connection{} at {}",
        answer.connections_reviewed,
        if answer.connections_reviewed == 1 { "" } else { "s" },
        answer.reviewed_at.to_rfc3339()
    );
    if answer.findings.is_empty() {
        println!("  (no findings)");
    }
    for finding in &answer.findings {
        let kind = serde_json::to_value(finding.kind)?;
        println!(
            "  {:<16} {} {} ({}): {}",
            kind.as_str().unwrap_or_default(),
            finding.service,
            finding.connection_id,
            finding.name,
            finding.reason
        );
        for related in &finding.related {
            println!("  {:<16}   same secret as {related}", "");
        }
        println!("  {:<16}   → {}", "", finding.action);
    }
    Ok(())
}
