//! `connections-bench commands` runs end to end against the real Postgres
//! and NATS: its load client drives the whole mix over HTTP (the benchmark
//! stops at the first answer that is not the one a command should get), and
//! every phase reports what it measured.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The benchmark's phases take about 15 s at this size; this bounds a hang.
const WITHIN: Duration = Duration::from_secs(180);

#[test]
fn the_mix_benchmark_runs_every_phase_against_the_real_services() {
    let server = std::env::var("CONNECTIONS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut child = Command::new(env!("CARGO_BIN_EXE_connections-bench"))
        .args(["commands", "--seconds", "1", "--concurrency", "2", "--rounds", "1"])
        .env("CONNECTIONS_BENCH_SERVER", server)
        .env("CONNECTIONS_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the benchmark starts");
    let started = Instant::now();
    while child.try_wait().expect("the benchmark can be waited for").is_none() {
        if started.elapsed() > WITHIN {
            let _ = child.kill();
            panic!("the benchmark ran longer than {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("the benchmark's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for path in ["raw", "product", "alone", "http"] {
        let row = stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("no {path} row in:\n{stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[1], "2", "{row}");
        let commands: u64 = fields[2].parse().unwrap_or_else(|_| panic!("{row}"));
        // The product phases run whole mixes of six commands.
        let least = if path == "product" || path == "alone" { 6 } else { 1 };
        assert!(commands >= least, "{path} ran {commands} commands: {row}");
    }
    assert!(stdout.contains("C=2: product / raw per round"), "{stdout}");
}
