//! Test support shared by the crates' integration tests and the end-to-end
//! suites: every test gets its own database on the real Postgres server.

mod oauth;
pub use oauth::OauthProvider;

use std::str::FromStr;

use connections_store::{connect_pool, ensure_database, migrate, Database};

/// The server tests run against: `CONNECTIONS_TEST_DATABASE_URL` without a
/// database name, or the local trust-auth server.
pub fn server_url() -> String {
    std::env::var("CONNECTIONS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database, migrated, dropped (with `FORCE`) when this value drops.
pub struct TestDatabase {
    /// The database's URL.
    pub url: String,
    /// Its name (`connections_test_<uuid>`).
    pub name: String,
    /// A pool on it.
    pub database: Database,
}

impl TestDatabase {
    /// Creates and migrates a database with a unique name.
    pub async fn new() -> Self {
        Self::with_migrations(true).await
    }

    /// Creates a database, migrated or not.
    pub async fn with_migrations(migrated: bool) -> Self {
        let (name, url) = unique_database();
        ensure_database(&url).await.unwrap_or_else(|e| panic!("create the test database: {e:?}"));
        if migrated {
            migrate(&url).await.expect("migrate the test database");
        }
        let database = connect_pool(&url, 16).expect("pool on the test database");
        Self { url, name, database }
    }

    /// A plain client on the test database, for assertions in SQL.
    pub async fn client(&self) -> tokio_postgres::Client {
        let config = tokio_postgres::Config::from_str(&self.url).expect("valid test database URL");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// A database name no other test uses, and its URL (the database is not created).
pub fn unique_database() -> (String, String) {
    unique_database_on(&server_url(), "connections_test")
}

/// A database name `<prefix>_<uuid>` on `server`, and its URL (not created).
pub fn unique_database_on(server: &str, prefix: &str) -> (String, String) {
    let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let url = format!("{}/{}", server.trim_end_matches('/'), name);
    (name, url)
}

/// Drops a database if it exists, terminating its connections. Blocking:
/// it runs on a plain thread with a private runtime, so it works from `Drop`.
pub fn drop_database(name: &str) {
    let owned = name.to_owned();
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(drop_database_on(&server_url(), &owned)).ok()
    })
    .join();
    if !matches!(dropped, Ok(Some(()))) {
        eprintln!("warning: test database {name} was not dropped");
    }
}

/// Drops database `name` on `server` if it exists, terminating its connections.
pub async fn drop_database_on(server: &str, name: &str) -> Result<(), tokio_postgres::Error> {
    let url = format!("{}/postgres", server.trim_end_matches('/'));
    let config = tokio_postgres::Config::from_str(&url)?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await
}

/// A fresh, migrated database on a given server that lives until
/// [`FreshDatabase::remove`] (for the benchmarks, which name their server
/// and drop their database explicitly, reporting a failure).
pub struct FreshDatabase {
    /// The server's URL, without a database name.
    pub server: String,
    /// The database's name (`<prefix>_<uuid>`).
    pub name: String,
    /// The database's URL.
    pub url: String,
}

impl FreshDatabase {
    /// Creates and migrates a database named after `prefix` on `server`.
    pub async fn create(server: &str, prefix: &str) -> Result<Self, connections_store::StoreError> {
        let (name, url) = unique_database_on(server, prefix);
        ensure_database(&url).await?;
        let fresh = Self { server: server.to_owned(), name, url };
        if let Err(e) = migrate(&fresh.url).await {
            let _ = fresh.remove().await;
            return Err(e);
        }
        Ok(fresh)
    }

    /// Drops the database.
    pub async fn remove(self) -> Result<(), tokio_postgres::Error> {
        drop_database_on(&self.server, &self.name).await
    }
}
