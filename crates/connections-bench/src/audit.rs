//! The audit benchmark, on a generated log of a million events (see
//! [`super::generate`]), each measurement next to its raw baseline from the
//! same run:
//!
//! - reading the log from Postgres: raw `SELECT` (rows and JSON decoded) and
//!   raw `COPY … TO STDOUT`, against `audit export` and `audit verify`;
//! - reading the export file: raw line reading with no parsing, against
//!   offline `verify --file` and `as-of --file` (each in its own process, one
//!   core, with its peak resident memory);
//! - `as-of` for one owner from Postgres (index by owner), against a raw
//!   `SELECT` of the same rows.

use std::io::BufRead;
use std::process::Command;
use std::time::{Duration, Instant};

use connections_audit::replay::AsOf;
use connections_audit::source::{read_log, LogFilter};
use futures_util::StreamExt;

use super::generate::{generate_log, owner, OWNERS};
use super::stats::{ms, Summary};

/// Options of `connections-bench audit`.
#[derive(clap::Args)]
pub struct AuditOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// Events in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// `as-of` queries from Postgres (one random owner each).
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Keep the export file in this directory (default: a scratch directory, removed after).
    #[arg(long)]
    keep_in: Option<std::path::PathBuf>,
}

/// Runs the benchmark.
pub async fn run(options: AuditOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let (name, url) = (&database.name, &database.url);
    let dir = options.keep_in.clone().unwrap_or_else(|| std::env::temp_dir().join(name));
    std::fs::create_dir_all(&dir)?;
    let result = run_on(url, &dir, &options).await;
    if options.keep_in.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    database.remove().await?;
    result
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A subprocess's wall time and peak resident memory (polled from /proc).
struct Run {
    elapsed: Duration,
    peak_mib: f64,
    stdout: String,
}

fn measure(url: &str, args: &[&str]) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut child = Command::new(super::server_binary()?)
        .arg("audit")
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", url)
        .env("CONNECTIONS_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
        text
    });
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
                let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    let stdout = reader.join().unwrap_or_default();
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        anyhow::bail!("audit {args:?} failed: {stderr}");
    }
    Ok(Run { elapsed, peak_mib: peak_kib as f64 / 1024.0, stdout })
}

async fn run_on(url: &str, dir: &std::path::Path, options: &AuditOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let (events, accesses) = generate_log(url, options.events).await?;
    println!(
        "generated {events} events and {accesses} access records over {OWNERS} owners in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();

    // Raw baselines from Postgres.
    let client = connect(url).await?;
    let scan_started = Instant::now();
    let rows = client
        .query_raw(
            "SELECT position, transaction_id::text, event_id, stream_id, stream_version, event_type, schema_version, \
             data, metadata, recorded_at, previous_hash, hash FROM events ORDER BY transaction_id, position",
            std::iter::empty::<i64>(),
        )
        .await?;
    futures_util::pin_mut!(rows);
    let mut scanned = 0u64;
    while let Some(row) = rows.next().await {
        let _: serde_json::Value = row?.get(7);
        scanned += 1;
    }
    let raw_select = scan_started.elapsed();
    let copy_started = Instant::now();
    let copy = client.copy_out("COPY (SELECT * FROM events ORDER BY transaction_id, position) TO STDOUT").await?;
    futures_util::pin_mut!(copy);
    let mut copied_bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        copied_bytes += chunk?.len();
    }
    let raw_copy = copy_started.elapsed();

    // The audit over Postgres.
    let file = dir.join("export.jsonl");
    let file_text = file.to_string_lossy().into_owned();
    let export = measure(url, &["export", "--output", &file_text])?;
    let verify_pg = measure(url, &["verify"])?;
    let file_size = std::fs::metadata(&file)?.len();

    // Raw file read, no parsing.
    let read_started = Instant::now();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
    let mut line = Vec::with_capacity(1024);
    let mut lines = 0u64;
    while {
        line.clear();
        reader.read_until(b'\n', &mut line)? > 0
    } {
        lines += 1;
    }
    let raw_read = read_started.elapsed();

    // Offline.
    let verify_file = measure(url, &["verify", "--file", &file_text])?;
    let mid = {
        let c = connect(url).await?;
        let t: chrono::DateTime<chrono::Utc> =
            c.query_one("SELECT min(recorded_at) + interval '6 hours 30 minutes' FROM events", &[]).await?.get(0);
        t.to_rfc3339()
    };
    let as_of_file = measure(url, &["as-of", &mid, "--owner", &owner(4242), "--file", &file_text, "--json"])?;
    anyhow::ensure!(as_of_file.stdout.contains("svc"), "as-of from the file found nothing: {}", as_of_file.stdout);

    // as-of for one owner from Postgres, against a raw SELECT of the same rows.
    let at_time = chrono::DateTime::parse_from_rfc3339(&mid)?.with_timezone(&chrono::Utc);
    let mut client = connect(url).await?;
    let raw_statement = client
        .prepare(
            "SELECT position, transaction_id::text, event_id, stream_id, stream_version, event_type, schema_version, \
             data, metadata, recorded_at, previous_hash, hash FROM events \
             WHERE split_part(stream_id, '/', 2) = $1 ORDER BY transaction_id, position",
        )
        .await?;
    let (mut raw_samples, mut as_of_samples) = (Vec::new(), Vec::new());
    let phase = Instant::now();
    for q in 0..options.queries {
        let owner = owner((q as u64 * 7919) % OWNERS);
        let t = Instant::now();
        let rows = client.query(&raw_statement, &[&owner]).await?;
        raw_samples.push(t.elapsed());
        anyhow::ensure!(!rows.is_empty(), "no rows for {owner}");
        let t = Instant::now();
        let mut as_of = AsOf::new(owner.clone(), at_time);
        read_log(&mut client, &LogFilter { owner: Some(owner.clone()), ..LogFilter::default() }, &mut as_of).await?;
        let state = as_of.state();
        as_of_samples.push(t.elapsed());
        anyhow::ensure!(!state.services.is_empty(), "as-of {owner} found nothing");
    }
    let phase = phase.elapsed();
    let raw = Summary::new(raw_samples, phase);
    let as_of = Summary::new(as_of_samples, phase);

    println!();
    println!("{:<46} {:>12} {:>12} {:>9} {:>10}", "full pass", "records", "records/s", "vs raw", "peak MiB");
    let row = |label: &str, n: u64, d: Duration, raw: Option<f64>, peak: Option<f64>| {
        let r = rate(n, d);
        println!(
            "{:<46} {:>12} {:>12.0} {:>9} {:>10}",
            label,
            n,
            r,
            raw.map_or("-".into(), |raw| format!("{:.2}", r / raw)),
            peak.map_or("-".into(), |p| format!("{p:.1}"))
        );
    };
    let raw_select_rate = rate(scanned, raw_select);
    let raw_read_rate = rate(lines, raw_read);
    row("raw SELECT scan (rows + JSON)", scanned, raw_select, None, None);
    row(&format!("raw COPY TO STDOUT ({} MiB)", copied_bytes >> 20), scanned, raw_copy, Some(raw_select_rate), None);
    row(
        "audit export (Postgres → file, verified)",
        events + accesses,
        export.elapsed,
        Some(raw_select_rate),
        Some(export.peak_mib),
    );
    row(
        "audit verify (Postgres)",
        events + accesses,
        verify_pg.elapsed,
        Some(raw_select_rate),
        Some(verify_pg.peak_mib),
    );
    row(&format!("raw file read, no parsing ({} MiB)", file_size >> 20), lines, raw_read, None, None);
    row(
        "audit verify --file (offline)",
        events + accesses,
        verify_file.elapsed,
        Some(raw_read_rate),
        Some(verify_file.peak_mib),
    );
    row(
        "audit as-of --file (offline, verified)",
        events + accesses,
        as_of_file.elapsed,
        Some(raw_read_rate),
        Some(as_of_file.peak_mib),
    );
    println!();
    println!("{:<46} {:>10} {:>10} {:>10}", "one owner from Postgres", "p50 ms", "p99 ms", "max ms");
    for (label, s) in
        [("raw SELECT of the owner's events (index)", &raw), ("audit as-of (replay from the log)", &as_of)]
    {
        println!("{:<46} {:>10} {:>10} {:>10}", label, ms(s.p50), ms(s.p99), ms(s.max));
    }
    let verify_rate = rate(events + accesses, verify_file.elapsed);
    let as_of_rate = rate(events + accesses, as_of_file.elapsed);
    println!();
    println!(
        "goals: offline verify ≥ 500,000 records/s: {:.0} ({}); offline replay ≥ 500,000: {:.0} ({}); \
         as-of from Postgres < 50 ms: p99 {} ms ({}); memory well under 100 MiB: {:.1} MiB peak ({})",
        verify_rate,
        if verify_rate >= 500_000.0 { "met" } else { "NOT met" },
        as_of_rate,
        if as_of_rate >= 500_000.0 { "met" } else { "NOT met" },
        ms(as_of.p99),
        if as_of.p99 < Duration::from_millis(50) { "met" } else { "NOT met" },
        [export.peak_mib, verify_pg.peak_mib, verify_file.peak_mib, as_of_file.peak_mib]
            .into_iter()
            .fold(0.0, f64::max),
        if [export.peak_mib, verify_pg.peak_mib, verify_file.peak_mib, as_of_file.peak_mib].iter().all(|p| *p < 100.0) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
