//! `connections audit …`: history, time travel, verification and export,
//! from the live log or (`--file`) from an export alone.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use connections_audit::checkpoint::Checkpoint;
use connections_audit::replay::{AsOf, History, WhoCouldUse};
use connections_audit::source::{read_file, read_log, LogFilter};
use connections_audit::verify::{cursor_text, Verifier};
use connections_audit::{periodic, time, AuditError, AuditEvent, Both, Sink};
use connections_domain::{ConnectionId, OwnerId};

/// Audit subcommands. Each reads the live log, or an export with `--file`
/// (no database, no NATS). Times are RFC 3339.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Every event of a connection or of an owner, in log order, with time,
    /// actor and what changed (never secrets).
    History {
        /// A connection id.
        #[arg(long, conflicts_with = "owner", required_unless_present = "owner")]
        connection: Option<String>,
        /// A user id.
        #[arg(long)]
        owner: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Read an export file instead of the database (verified as read).
        #[arg(long)]
        file: Option<PathBuf>,
        /// At most this many events (a page); the next page's `--after` is
        /// printed on stderr when there are more.
        #[arg(long)]
        limit: Option<u64>,
        /// Only events after this cursor (`TX:POSITION`, from a previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// An owner's connections as they were at TIME: status, default per
    /// service, which agent was bound to which connection. Replayed from the
    /// log, not read from current tables.
    AsOf {
        /// The instant, RFC 3339 (e.g. 2026-11-26T08:00:00Z).
        time: String,
        /// The user id.
        #[arg(long)]
        owner: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read an export file instead of the database (verified as read).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// For each agent, the intervals during which it was bound to the
    /// connection, and the actual hand-outs from the access log, within the
    /// window.
    WhoCouldUse {
        /// The connection id.
        #[arg(long)]
        connection: String,
        /// Window start, RFC 3339 (default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// Window end, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read an export file instead of the database (verified as read).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Walk every hash chain (events per stream, access records per
    /// connection) and report the first broken link.
    Verify {
        /// Verify an export file instead of the database.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also prove that history before this earlier checkpoint (a file
        /// holding a checkpoint line, e.g. an old export) was not rewritten.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write the events and access records with their hashes, in order, and
    /// a closing checkpoint line, as JSON Lines.
    Export {
        /// Only this user's streams and access records (still verifiable alone).
        #[arg(long)]
        owner: Option<String>,
        /// Only events after this cursor (TX:POSITION, as a checkpoint's
        /// "cursor" prints it); access records are always complete.
        #[arg(long)]
        from: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Verify the live log and print its checkpoint (the head of every
    /// chain) as one JSON line, for the auditor to keep; a full one is also
    /// stored with the server's periodic checkpoints.
    Checkpoint {
        /// Only this user's chains (not stored).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Print the stored checkpoints (taken periodically by the server, and by
    /// `audit checkpoint`), one JSON line each, oldest first.
    Checkpoints {
        /// Only those taken at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Runs an audit subcommand; `database_url` is only read when the command
/// needs the database.
pub async fn run(command: AuditCommand, database_url: impl Fn() -> String) -> anyhow::Result<()> {
    match command {
        AuditCommand::History { connection, owner, json, file, limit, after } => {
            anyhow::ensure!(limit != Some(0), "--limit must be at least 1");
            let after = after.map(|raw| time::parse_cursor("--after", &raw).map_err(anyhow::Error::msg)).transpose()?;
            let connection = connection
                .map(|c| ConnectionId::parse(&c).map_err(|e| anyhow::anyhow!("--connection {e}")))
                .transpose()?;
            let owner = owner.map(|o| OwnerId::parse(o).map_err(|e| anyhow::anyhow!("--owner {e}"))).transpose()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut history = History::new(
                owner.as_ref().map(ToString::to_string),
                connection.map(|c| c.as_uuid()),
                |event: &AuditEvent<'_>| print_event(&mut out, event, json),
            )
            .page(after, limit);
            let filter = match (&owner, connection) {
                (Some(owner), _) => Some(LogFilter { owner: Some(owner.to_string()), ..LogFilter::default() }),
                (None, Some(connection)) => connection_filter(&database_url, file.is_none(), connection).await?,
                (None, None) => anyhow::bail!("give --connection or --owner"),
            }
            .map(|filter| LogFilter { from: after, ..filter });
            match (file, filter) {
                (Some(file), _) => from_file(&file, &mut history)?,
                (None, Some(filter)) => from_log(&database_url(), &filter, &mut history).await?,
                (None, None) => {}
            }
            let count = history.count;
            if let Some(next) = history.next {
                eprintln!("more events: --after {}", cursor_text(next));
            }
            drop(history);
            if !json && count == 0 {
                writeln!(out, "(no events)")?;
            }
            out.flush()?;
            Ok(())
        }
        AuditCommand::AsOf { time, owner, json, file } => {
            let at = time::parse_time("TIME", &time).map_err(anyhow::Error::msg)?;
            let owner = OwnerId::parse(owner).map_err(|e| anyhow::anyhow!("--owner {e}"))?;
            let mut as_of = AsOf::new(owner.to_string(), at);
            match file {
                Some(file) => from_file(&file, &mut as_of)?,
                None => {
                    let filter = LogFilter { owner: Some(owner.to_string()), ..LogFilter::default() };
                    from_log(&database_url(), &filter, &mut as_of).await?
                }
            }
            let state = as_of.state();
            if json {
                println!("{}", serde_json::to_string(&state)?);
                return Ok(());
            }
            println!("{} as of {}", state.owner, state.at.to_rfc3339());
            if state.services.is_empty() {
                println!("(no connections)");
            }
            for service in &state.services {
                println!("{}  default: {}", service.service, service.default.map_or("-".into(), |d| d.to_string()));
                for c in &service.connections {
                    println!(
                        "  {}  {:<8} v{}  {:<24} agents: {}",
                        c.connection_id,
                        c.status,
                        c.credential_version,
                        c.name,
                        if c.agents.is_empty() { "-".into() } else { c.agents.join(", ") }
                    );
                }
            }
            Ok(())
        }
        AuditCommand::WhoCouldUse { connection, from, to, json, file } => {
            let connection = ConnectionId::parse(&connection).map_err(|e| anyhow::anyhow!("--connection {e}"))?;
            let window = time::parse_window(from.as_deref(), to.as_deref()).map_err(anyhow::Error::msg)?;
            let mut who = WhoCouldUse::new(connection.as_uuid(), window);
            match file {
                Some(file) => from_file(&file, &mut who)?,
                None => {
                    if let Some(filter) = connection_filter(&database_url, true, connection).await? {
                        let filter = LogFilter { accesses: Some(Some(connection.as_uuid())), ..filter };
                        from_log(&database_url(), &filter, &mut who).await?
                    }
                }
            }
            let usage = who.usage();
            if json {
                println!("{}", serde_json::to_string(&usage)?);
                return Ok(());
            }
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
            println!(
                "connection {}  created {}  revoked {}",
                usage.connection_id,
                time(usage.created_at),
                time(usage.revoked_at)
            );
            if let Some(replaces) = usage.replaces {
                println!("replaces {replaces}");
            }
            if let Some(replaced_by) = usage.replaced_by {
                println!("replaced by {replaced_by}");
            }
            println!("bindings overlapping the window:");
            if usage.bindings.is_empty() {
                println!("  (none)");
            }
            for b in &usage.bindings {
                println!(
                    "  {:<20} {} → {}  ({}{})",
                    b.agent_id,
                    b.from.to_rfc3339(),
                    b.until.map_or("still bound".into(), |u| u.to_rfc3339()),
                    b.source,
                    b.ended_by.as_ref().map_or(String::new(), |e| format!(", ended: {e}"))
                );
            }
            println!("hand-outs in the window:");
            if usage.handouts.is_empty() {
                println!("  (none)");
            }
            for h in &usage.handouts {
                println!(
                    "  {}  {:<20} v{}  request {}{}",
                    h.at.to_rfc3339(),
                    h.agent_id,
                    h.credential_version,
                    h.request_id,
                    if h.while_bound { "" } else { "  (NOT while bound)" }
                );
            }
            Ok(())
        }
        AuditCommand::Verify { file, checkpoint } => {
            let earlier = checkpoint.map(|path| read_checkpoint(&path)).transpose()?;
            let mut verifier = match &file {
                Some(_) => Verifier::for_file(),
                None => Verifier::complete(),
            };
            if let Some(earlier) = &earlier {
                verifier = verifier.against(earlier);
            }
            let started = std::time::Instant::now();
            let outcome = match &file {
                Some(path) => {
                    let opened = File::open(path).with_context(|| format!("open {}", path.display()))?;
                    read_file(BufReader::with_capacity(1 << 20, opened), &mut verifier)
                        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe_failure(e)))
                }
                None => {
                    let filter = LogFilter { accesses: Some(None), ..LogFilter::default() };
                    from_log(&database_url(), &filter, &mut verifier).await
                }
            };
            let (checkpoint, report) = outcome.and_then(|()| {
                verifier.finish(None, None, file.is_some()).map_err(|e| anyhow::anyhow!(describe_failure(e)))
            })?;
            println!(
                "verified: {} events and {} access records, every chain intact ({:.2?}); head digest {}",
                report.events,
                report.accesses,
                started.elapsed(),
                checkpoint.digest
            );
            if earlier.is_some() {
                println!(
                    "the earlier checkpoint holds: {} heads passed unchanged, {} outside what was read",
                    report.confirmed, report.not_covered
                );
            }
            Ok(())
        }
        AuditCommand::Export { owner, from, output } => {
            let owner = owner.map(|o| OwnerId::parse(o).map_err(|e| anyhow::anyhow!("--owner {e}"))).transpose()?;
            let from = from.map(|f| time::parse_cursor("--from", &f)).transpose().map_err(anyhow::Error::msg)?;
            let out: Box<dyn Write> = match &output {
                Some(path) => Box::new(File::create(path).with_context(|| format!("create {}", path.display()))?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut exporter = connections_audit::export::Exporter::new(out);
            let mut verifier = if from.is_some() { Verifier::for_file() } else { Verifier::complete() };
            let filter = LogFilter {
                owner: owner.as_ref().map(ToString::to_string),
                from,
                accesses: Some(None),
                horizon: true,
                ..LogFilter::default()
            };
            from_log(&database_url(), &filter, &mut Both(&mut verifier, &mut exporter)).await?;
            let (checkpoint, report) = verifier
                .finish(owner.map(|o| o.to_string()), from, false)
                .map_err(|e| anyhow::anyhow!(describe_failure(e)))?;
            exporter.finish(&checkpoint)?;
            eprintln!(
                "exported {} events and {} access records; checkpoint cursor {} digest {}",
                report.events,
                report.accesses,
                checkpoint.cursor.as_deref().unwrap_or("-"),
                checkpoint.digest
            );
            Ok(())
        }
        AuditCommand::Checkpoint { owner } => {
            let owner = owner.map(|o| OwnerId::parse(o).map_err(|e| anyhow::anyhow!("--owner {e}"))).transpose()?;
            let mut client = connect(&database_url()).await?;
            let checkpoint = periodic::take(&mut client, owner.as_ref().map(ToString::to_string))
                .await
                .map_err(|e| anyhow::anyhow!(describe_failure(e)))?;
            if owner.is_none() {
                periodic::store(&client, &checkpoint).await?;
            }
            std::io::stdout().write_all(periodic::line(&checkpoint).as_bytes())?;
            Ok(())
        }
        AuditCommand::Checkpoints { since } => {
            let since = since.map(|t| time::parse_time("--since", &t)).transpose().map_err(anyhow::Error::msg)?;
            let mut client = connect(&database_url()).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            periodic::list(&mut client, since, |line| {
                let _ = out.write_all(line.as_bytes());
            })
            .await?;
            Ok(())
        }
    }
}

/// The stream holding `connection`, or `None` (an empty answer) if no such
/// connection exists. Without a database (`--file`), no filter is needed.
async fn connection_filter(
    database_url: &impl Fn() -> String,
    use_database: bool,
    connection: ConnectionId,
) -> anyhow::Result<Option<LogFilter>> {
    if !use_database {
        return Ok(Some(LogFilter::default()));
    }
    let client = connect(&database_url()).await?;
    let row = client
        .query_opt(
            "SELECT owner_id, service FROM connection_locator WHERE connection_id = $1",
            &[&connection.as_uuid()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let owner = connections_domain::OwnerId::parse(row.get::<_, String>(0)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let service =
        connections_domain::ServiceName::parse(row.get::<_, String>(1)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stream_id = connections_store::StreamId::owner_service(&owner, &service);
    Ok(Some(LogFilter { stream_id: Some(stream_id.to_string()), ..LogFilter::default() }))
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connect to the database")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn from_log(url: &str, filter: &LogFilter, sink: &mut impl Sink) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    read_log(&mut client, filter, sink).await.map_err(|e| anyhow::anyhow!(describe_failure(e)))
}

/// Reads an export file into `sink`, verifying every chain on the way: a
/// replay of a damaged file stops at the damage.
fn from_file(path: &PathBuf, sink: &mut impl Sink) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut verifier = Verifier::for_file();
    read_file(BufReader::with_capacity(1 << 20, file), &mut Both(&mut verifier, sink))
        .and_then(|()| verifier.finish(None, None, true).map(drop))
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe_failure(e)))
}

fn describe_failure(error: AuditError) -> String {
    error.to_string()
}

/// The checkpoint in a file: its last line (a checkpoint alone, or an
/// export; only the file's tail is read).
fn read_checkpoint(path: &PathBuf) -> anyhow::Result<Checkpoint> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 << 20;
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.trim_end().rsplit('\n').next().unwrap_or("");
    match connections_audit::record::parse_line(connections_audit::At::Line(0), line) {
        Ok(connections_audit::record::Line::Checkpoint(checkpoint)) => {
            if checkpoint.digest != checkpoint.compute_digest() {
                anyhow::bail!("{}: the checkpoint's digest does not match its content", path.display());
            }
            Ok(*checkpoint)
        }
        _ => anyhow::bail!("{}: its last line is not a checkpoint", path.display()),
    }
}

fn print_event(out: &mut impl Write, event: &AuditEvent<'_>, json: bool) {
    let data = event.data.value().map(|d| d.into_owned()).unwrap_or(serde_json::Value::Null);
    let actor = event.actor();
    let written = if json {
        serde_json::to_string(&serde_json::json!({
            "recorded_at": event.recorded_at.to_rfc3339(),
            "position": event.position,
            "transaction_id": event.transaction_id,
            "cursor": cursor_text(event.cursor()),
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
            "event_type": event.event_type,
            "schema_version": event.schema_version,
            "actor": actor,
            "data": data,
            "hash": event.hash,
        }))
        .map_err(std::io::Error::from)
        .and_then(|line| writeln!(out, "{line}"))
    } else {
        writeln!(
            out,
            "{}  {:>8}  {:<20} {:<14} {}",
            event.recorded_at.to_rfc3339(),
            event.position,
            event.event_type,
            actor.as_deref().unwrap_or("?"),
            data
        )
    };
    // A closed pipe (e.g. `| head`) ends the output, nothing else to do.
    let _ = written;
}
