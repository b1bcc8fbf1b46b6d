//! Drives the real `connections` binary: builds it once, starts it on port 0
//! against a database of its own, captures everything it prints, and stops it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use connections_testkit::{drop_database, unique_database};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `connections` binary, built once per test run.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "connections", "--bin", "connections"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the connections binary failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace_root().join("target"));
            target.join("debug").join("connections")
        })
        .clone()
}

/// A fixed development secret for tests (at least 32 bytes).
pub const JWT_SECRET: &str = "e2e-secret-that-is-long-enough-for-hs256";

/// A base64 master key for tests (64 zero-free bytes).
pub fn master_key() -> String {
    // 64 bytes of 0x2a, base64-encoded: fixed so that failures reproduce.
    "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKg==".into()
}

/// A running server and everything it has printed.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its database's URL.
    pub database_url: String,
    database_name: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `connections serve` on port 0 with a database that does not
    /// exist yet (the server creates and migrates it), with extra environment.
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        let (database_name, database_url) = unique_database();
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
            .env("CONNECTIONS_DATABASE_URL", &database_url)
            .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
            .env("CONNECTIONS_MASTER_KEY", master_key())
            .env("CONNECTIONS_DATABASE_POOL", "8")
            .env_remove("CONNECTIONS_MASTER_KEY_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start connections serve");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().expect("output lock");
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        let started = Instant::now();
        let base = loop {
            if let Some(line) = output.lock().expect("output lock").lines().find(|l| l.starts_with("listening on ")) {
                break line.trim_start_matches("listening on ").trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited with {status}: {}", output.lock().expect("output lock"));
            }
            assert!(started.elapsed() < Duration::from_secs(60), "server did not start in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, base, database_url, database_name, output }
    }

    /// Everything the server printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// A development token for `user`, minted by `connections token`.
    pub fn token(&self, user: &str) -> String {
        let output = Command::new(binary())
            .args(["token", "--user", user])
            .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
            .output()
            .expect("run connections token");
        assert!(output.status.success(), "token failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8 token").trim().to_owned()
    }

    /// Stops the server with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        drop_database(&self.database_name);
    }
}
