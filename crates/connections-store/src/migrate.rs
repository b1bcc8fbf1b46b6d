//! Schema migrations, embedded in the binary and run by refinery.

use std::str::FromStr;

use tokio_postgres::NoTls;

use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The roles V2 creates are cluster-wide, and the advisory lock above is
/// per database: two databases migrating at once (parallel tests) race on
/// `CREATE ROLE`, and the loser gets `unique_violation`, which V2's
/// `duplicate_object` handler does not catch. Creating them first, tolerating
/// both, makes V2 find them.
const ENSURE_ROLES: &str = "DO $$ BEGIN \
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'connections_reader') THEN \
            CREATE ROLE connections_reader NOLOGIN NOSUPERUSER NOBYPASSRLS; END IF; \
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
    DO $$ BEGIN \
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'connections_projector') THEN \
            CREATE ROLE connections_projector NOLOGIN NOSUPERUSER NOBYPASSRLS; END IF; \
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;";

/// Applies every pending migration to the database at `url`. Safe to run
/// concurrently from several processes: refinery takes its own lock table,
/// and a losing racer finds the work done.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let config = tokio_postgres::Config::from_str(url)?;
    let (mut client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    // Serialize concurrent migrators (several servers starting at once).
    client.batch_execute("SELECT pg_advisory_lock(7243001)").await?;
    client.batch_execute(ENSURE_ROLES).await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let sealed = match report {
        Ok(_) => crate::seal::seal_unchained(&mut client).await,
        Err(_) => Ok(0),
    };
    client.batch_execute("SELECT pg_advisory_unlock(7243001)").await?;
    let report = report?;
    if sealed? > 0 {
        tracing::info!("sealed the hash chains of rows written before chaining");
    }
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Whether every migration this binary embeds is applied to the database
/// `client` is connected to (readiness: a server must not serve a schema
/// older than its code).
pub async fn is_current(client: &tokio_postgres::Client) -> Result<bool, StoreError> {
    let latest = embedded::migrations::runner().get_migrations().iter().map(|m| m.version()).max().unwrap_or(0);
    let applied: Option<i32> =
        client.query_one("SELECT max(version) FROM refinery_schema_history", &[]).await.map(|row| row.get(0)).or_else(
            |error| match error.code() {
                Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
                _ => Err(error),
            },
        )?;
    Ok(applied.is_some_and(|applied| applied as u32 >= latest))
}
