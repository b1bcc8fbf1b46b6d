//! Telling the relay that events were committed.
//!
//! The relay reads the log when woken: by this instance's commits at once,
//! in memory, and by other instances' commits through a Postgres `NOTIFY`
//! on [`EVENTS_CHANNEL`] (the relay may lead from another instance). One
//! `NOTIFY` per commit cost a transaction of its own per command, the
//! server's notification-queue lock, and a signal to every listening
//! backend; commits that land while one `NOTIFY` is on its way are covered
//! by the next one instead. An instance whose own relay leads sends none:
//! only the leading relay listens for them, and it was woken in memory (a
//! `NOTIFY` would only wake it a second time, for an empty read).
//!
//! **Invariant:** every commit announced while this instance does not lead
//! the relay is followed by a `NOTIFY` sent after the commit returned (so a
//! listener that reads the log when woken sees it). A commit announced
//! while a `NOTIFY` is queued but not yet sent is covered by that one; one
//! announced while a `NOTIFY` is in flight queues the next. A commit
//! announced while this instance leads is read by its relay, woken in
//! memory; if that relay is losing its lock at that moment, the next
//! leader reads the commit when it starts or at its fallback poll.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connections_store::{Database, StoreError};
use tokio::sync::{mpsc, Notify};

use crate::listener::EVENTS_CHANNEL;

/// How many times a failed `NOTIFY` is sent again before the commits it
/// covers are left to the relay's fallback poll.
const NOTIFY_ATTEMPTS: u32 = 3;

/// Announces commits that appended events; see the module documentation.
/// Clones share one queue.
#[derive(Clone, Default)]
pub struct Announcer {
    /// Started on the first announcement, on the runtime that made it; the
    /// task ends when every clone is dropped.
    queue: Arc<OnceLock<mpsc::Sender<Database>>>,
}

impl Announcer {
    /// After a commit that appended events: wakes `local` (this instance's
    /// relay) now and, when `relay_elsewhere` (this instance's relay does not
    /// lead), queues a `NOTIFY` on `database` for every instance's listener.
    /// Never waits. Call it on a Tokio runtime (the first call that queues
    /// starts the task that sends the `NOTIFY`s there).
    pub fn committed(&self, database: &Database, local: &Notify, relay_elsewhere: bool) {
        local.notify_one();
        if !relay_elsewhere {
            return;
        }
        let queue = self.queue.get_or_init(|| {
            // One slot: a full queue already holds a NOTIFY not yet sent.
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(send_notifies(receiver));
            sender
        });
        if let Ok(slot) = queue.try_reserve() {
            slot.send(database.clone());
        }
    }
}

async fn send_notifies(mut queue: mpsc::Receiver<Database>) {
    while let Some(database) = queue.recv().await {
        for attempt in 1..=NOTIFY_ATTEMPTS {
            match notify(&database).await {
                Ok(()) => break,
                Err(error) => {
                    // Nothing is lost: the relay also polls the log.
                    tracing::warn!(attempt, %error, "could not notify the log's listeners of a commit");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        }
    }
}

async fn notify(database: &Database) -> Result<(), StoreError> {
    let client = database.pool().get().await?;
    client.batch_execute(&format!("NOTIFY {EVENTS_CHANNEL}")).await?;
    Ok(())
}
