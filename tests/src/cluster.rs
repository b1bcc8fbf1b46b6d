//! What a cluster test runs beside the instances: a 3-node JetStream
//! cluster in decentralized JWT mode (nats-server 2.10+) and a private
//! PostgreSQL server that can be stopped and started (the machine's shared
//! one serves every other test).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, free_port, wait_for_port, NatsVersion};

/// A JetStream cluster of nodes on loopback ports, killed and its storage
/// removed on drop.
pub struct NatsCluster {
    binary: String,
    directory: PathBuf,
    nodes: Vec<Node>,
    /// The issuer file `connections nats init` wrote (the service's key).
    pub issuer_file: String,
}

struct Node {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream has a meta leader.
    pub fn start(size: usize) -> Self {
        let binary = NatsVersion::Current.binary();
        let directory = std::env::temp_dir().join(format!("connections-cluster-{}", uuid::Uuid::now_v7().simple()));
        let auth = directory.join("auth");
        let output =
            Command::new(binary_path()).args(["nats", "init", "--dir"]).arg(&auth).output().expect("run nats init");
        assert!(output.status.success(), "nats init failed: {}", String::from_utf8_lossy(&output.stderr));
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, route)| format!("nats-route://127.0.0.1:{route}")).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(index, (port, route))| {
                let config = auth.join(format!("node{index}.conf"));
                let store = directory.join(format!("node{index}"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: node{index}\ninclude auth.conf\nlisten: \"127.0.0.1:{port}\"\n\
                         jetstream {{ store_dir: \"{}\" }}\n\
                         cluster {{ name: test, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                        store.display(),
                        routes.join(", ")
                    ),
                )
                .expect("write node config");
                Node { config, port: *port, child: None }
            })
            .collect();
        let mut cluster =
            Self { binary, directory, nodes, issuer_file: auth.join("issuer.json").to_string_lossy().into_owned() };
        for index in 0..size {
            cluster.start_node(index);
        }
        cluster
    }

    /// The client URL of node `index`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// Every node's URL, comma-separated, node `first` first.
    pub fn urls_from(&self, first: usize) -> String {
        let count = self.nodes.len();
        (0..count).map(|offset| self.url((first + offset) % count)).collect::<Vec<_>>().join(",")
    }

    /// The node index of a server name (`node1` → 1).
    pub fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix("node")?.parse().ok()
    }

    /// Kills node `index` (SIGKILL).
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of node `index`'s log (for a failure's message).
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.nodes[index].config.with_extension("log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts node `index` (again), on its port and storage.
    pub fn start_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        // Each node's log, kept across its restarts (see `NatsCluster::log_tail`).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.config.with_extension("log"))
            .expect("open the node's log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        node.child = Some(child);
        wait_for_port(node.port, Duration::from_secs(20));
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill_node(index);
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn binary_path() -> PathBuf {
    binary()
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory,
/// on a free loopback port, trust authentication), run as the `postgres`
/// user when the test runs as root. Stopped and removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    directory: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Initializes and starts one.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb");
        let directory = std::env::temp_dir().join(format!("connections-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&directory).expect("directory");
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let server = Self { bin, directory, port: free_port(), as_postgres };
        if as_postgres {
            let status = Command::new("chown").arg("postgres:postgres").arg(&server.directory).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the data directory");
        }
        let data = server.directory.join("data");
        server.run("initdb", &["-D", &data.to_string_lossy(), "-U", "postgres", "-A", "trust", "--no-sync"]);
        server.start_again();
        server
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            command
        } else {
            Command::new(self.bin.join(tool))
        };
        let output = command.args(args).output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(output.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// A database URL on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops it the way an operator restarting it would (`pg_ctl stop -m fast`:
    /// sessions are disconnected, transactions in flight roll back).
    pub fn stop(&self) {
        let data = self.directory.join("data");
        self.run("pg_ctl", &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.directory.join("data");
        let log = self.directory.join("postgres.log");
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
            self.port,
            self.directory.display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-o", &options, "-w", "start"],
        );
        wait_for_port(self.port, Duration::from_secs(30));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.directory.join("data");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            command
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command.args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Waits (bounded) until `check` is true.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
