//! Schema migrations, embedded in the binary and run by refinery.

use std::str::FromStr;

use tokio_postgres::NoTls;

use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies every pending migration to the database at `url`. Safe to run
/// concurrently from several processes: refinery takes its own lock table,
/// and a losing racer finds the work done.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let config = tokio_postgres::Config::from_str(url)?;
    let (mut client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    // Serialize concurrent migrators (several servers starting at once).
    client.batch_execute("SELECT pg_advisory_lock(7243001)").await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    client.batch_execute("SELECT pg_advisory_unlock(7243001)").await?;
    let report = report?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
