//! The announcer: a commit wakes this instance's relay at once and, unless
//! that relay leads, every instance's listener through a NOTIFY, one NOTIFY
//! for the commits made while it was queued.

use std::time::Duration;

use connections_fanout::{Signals, EVENTS_CHANNEL};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Harness;

/// A plain LISTEN connection on the events channel: one item per NOTIFY.
async fn listen(harness: &Harness) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<()>) {
    use std::str::FromStr;
    let config = tokio_postgres::Config::from_str(&harness.db.url).expect("url");
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.expect("connect");
    let (heard, hearing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                let _ = heard.send(());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}")).await.expect("listen");
    (client, hearing)
}

/// How many notifications arrive within `quiet` of each other (bounded).
async fn count_until_quiet(hearing: &mut mpsc::UnboundedReceiver<()>, quiet: Duration) -> usize {
    let mut count = 0;
    while count < 1_000 && tokio::time::timeout(quiet, hearing.recv()).await.is_ok_and(|heard| heard.is_some()) {
        count += 1;
    }
    count
}

// One thread: the fifty announcements run without the sending task being
// able to take the first from its queue in between.
#[tokio::test(flavor = "current_thread")]
async fn commits_announced_together_share_one_notify_and_a_later_one_gets_its_own() {
    let harness = Harness::new().await;
    let (_client, mut hearing) = listen(&harness).await;
    let signals = Signals::new();
    for _ in 0..50 {
        signals.committed(&harness.db.database);
    }
    // This instance's relay is woken at once, without waiting for Postgres.
    tokio::time::timeout(Duration::from_millis(1), signals.appended.notified())
        .await
        .expect("the local relay was woken by the announcement itself");
    assert_eq!(count_until_quiet(&mut hearing, Duration::from_millis(500)).await, 1, "fifty commits, one NOTIFY");
    // A commit after that NOTIFY was sent is not covered by it.
    signals.committed(&harness.db.database);
    assert_eq!(count_until_quiet(&mut hearing, Duration::from_millis(500)).await, 1, "a later commit's own NOTIFY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_announced_commit_is_followed_by_a_notify() {
    let harness = Harness::new().await;
    let (_client, mut hearing) = listen(&harness).await;
    let signals = Signals::new();
    // Announcements racing the sending task: some coalesce, none is left
    // without a NOTIFY after it.
    for round in 0..20 {
        for _ in 0..=round % 4 {
            signals.committed(&harness.db.database);
        }
        let heard = tokio::time::timeout(Duration::from_secs(5), hearing.recv()).await;
        assert!(matches!(heard, Ok(Some(()))), "round {round}: no NOTIFY after the last announcement");
        // Drain what an earlier round's announcement may still have queued.
        count_until_quiet(&mut hearing, Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_relay_leads_wakes_it_in_memory_and_sends_no_notify() {
    let harness = Harness::new().await;
    let (_client, mut hearing) = listen(&harness).await;
    let signals = Signals::new();
    let leading = signals.roles.hold(connections_fanout::roles::RELAY);
    for _ in 0..10 {
        signals.committed(&harness.db.database);
        tokio::time::timeout(Duration::from_millis(1), signals.appended.notified())
            .await
            .expect("the local relay was woken by the announcement itself");
    }
    assert_eq!(count_until_quiet(&mut hearing, Duration::from_millis(500)).await, 0, "no NOTIFY while leading");
    // Once the relay leads elsewhere, other instances must hear of commits.
    drop(leading);
    signals.committed(&harness.db.database);
    assert_eq!(count_until_quiet(&mut hearing, Duration::from_millis(500)).await, 1, "a NOTIFY once not leading");
}
