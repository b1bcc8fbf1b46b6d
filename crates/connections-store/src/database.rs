//! Connecting to Postgres: creating the database if missing, and the pool.

use std::str::FromStr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::error::StoreError;
use crate::locator::LocationCache;
use crate::state_cache::StateCache;

/// A handle on the database: a bounded pool of connections, all with
/// `synchronous_commit = on` so that an acknowledged command is on disk;
/// the states of the streams this handle's commands wrote last, and where
/// the connections they touched live.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    name: &'static str,
    states: Arc<StateCache>,
    locations: Arc<LocationCache>,
}

impl Database {
    /// Wraps an existing pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool, name: "default", states: Arc::default(), locations: Arc::default() }
    }

    /// The whole states of streams that commands through this handle
    /// loaded or wrote (see [`StateCache`]), shared by its clones.
    pub fn state_cache(&self) -> &StateCache {
        &self.states
    }

    /// Where connections live (see [`LocationCache`]), shared by this
    /// handle's clones.
    pub fn location_cache(&self) -> &LocationCache {
        &self.locations
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool's name in metrics.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A pooled connection, recording the wait in
    /// `connections_db_pool_wait_seconds`.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await;
        connections_metrics::POOL_WAIT_SECONDS.observe_duration(&[self.name], started.elapsed());
        Ok(client?)
    }
}

/// Creates the database named in `url` if it does not exist, by connecting
/// to the `postgres` maintenance database on the same server.
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let config = tokio_postgres::Config::from_str(url)?;
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (client, connection) = maintenance.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    // Instances started together race to create it: a loser gets
    // duplicate_database, or object_in_use (template1 is being copied by the
    // winner). Either way, look again until it exists (bounded).
    for attempt in 0..50 {
        if client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some() {
            break;
        }
        let quoted = name.replace('"', "\"\"");
        match client.batch_execute(&format!("CREATE DATABASE \"{quoted}\"")).await {
            Ok(()) => {
                tracing::info!(database = %name, "created database");
                break;
            }
            Err(e)
                if attempt < 49
                    && matches!(
                        e.code(),
                        Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                            | Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                            | Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// How long a caller waits for a free pooled connection.
pub const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The default size of the commands' pool: 8 connections per core. More
/// commands in Postgres at once than that do not finish sooner; they queue
/// for CPU behind one another and starve the relay and projector. Fewer
/// share fewer commits per WAL flush. On 2 cores, the mix at concurrency 32
/// (peers `project-commands`, 2026-11-30): a pool of 32 ran 1.18-1.26k
/// commands/s with the projection 0.25-0.5 s behind at p99; 16, 1.24k/s and
/// 0.1-0.25 s; 8, 1.03-1.06k/s and about 0.1 s.
pub fn default_pool_size() -> usize {
    8 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A pool of at most `max_size` connections to `url` (its sessions'
/// `application_name` is `connections`).
pub fn connect_pool(url: &str, max_size: usize) -> Result<Database, StoreError> {
    build_pool(url, max_size, "connections")
}

/// Like [`connect_pool`], for the pool of one kind of work (`commands`,
/// `reads`, `background`): named `name` in metrics, and its sessions'
/// `application_name` is `connections-<name>`, so that an operator (or a
/// benchmark) tells them apart in `pg_stat_activity`.
pub fn connect_named_pool(url: &str, max_size: usize, name: &'static str) -> Result<Database, StoreError> {
    let mut database = build_pool(url, max_size, &format!("connections-{name}"))?;
    database.name = name;
    Ok(database)
}

fn build_pool(url: &str, max_size: usize, application_name: &str) -> Result<Database, StoreError> {
    let mut config = tokio_postgres::Config::from_str(url)?;
    // The log's durability promise: never acknowledge before the WAL is flushed,
    // whatever the server's or the role's default says.
    config.options("-c synchronous_commit=on");
    config.application_name(application_name);
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    // A request waits at most this long for a free connection, then gets a
    // transient error (503 with Retry-After), never an unbounded wait.
    let pool = Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // Prepared before first use, so that a command's lock is sent at
        // the first poll, ahead of the statements joined with it (see
        // `EventLog::lock_stream`).
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                client.prepare_cached(crate::log::LOCK_STREAM).await.map_err(deadpool_postgres::HookError::Backend)?;
                Ok(())
            })
        }))
        .build()
        .map_err(|e| StoreError::Configuration(e.to_string()))?;
    Ok(Database::new(pool))
}
