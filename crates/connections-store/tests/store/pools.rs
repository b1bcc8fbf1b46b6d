//! Pools: each kind of work's sessions are named in `pg_stat_activity`.

use connections_store::{connect_named_pool, connect_pool};
use connections_testkit::TestDatabase;

async fn application_name(database: &connections_store::Database) -> String {
    let client = database.client().await.expect("pooled connection");
    client.query_one("SELECT current_setting('application_name')", &[]).await.expect("setting").get(0)
}

#[tokio::test]
async fn a_named_pool_names_its_sessions_and_its_metrics() {
    let db = TestDatabase::new().await;
    let commands = connect_named_pool(&db.url, 2, "commands").expect("pool");
    assert_eq!(commands.name(), "commands");
    assert_eq!(application_name(&commands).await, "connections-commands");
    // Another session sees it so, too.
    let client = db.client().await;
    let named: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'connections-commands'",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(named, 1);

    let plain = connect_pool(&db.url, 1).expect("pool");
    assert_eq!(plain.name(), "default");
    assert_eq!(application_name(&plain).await, "connections");
    commands.pool().close();
    plain.pool().close();
}
