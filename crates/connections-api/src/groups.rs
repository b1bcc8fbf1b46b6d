//! Commit groups: commands that arrive together share one transaction.
//!
//! A command alone pays its own `BEGIN` and `COMMIT`, a pooled connection
//! and a backend's wake-up for each of its round trips. Here a command joins
//! the group that is open, or opens one with a pooled connection: the
//! members run their attempts at once on the group's connection, their
//! statements pipelined together, and one `COMMIT` makes them all durable.
//! A group stops taking members when its first member is done, or when it
//! is full; it commits once every member is done.
//!
//! All or nothing. If any member did not come to a commit or a refusal (a
//! lost race, a transient error, anything) or was cancelled midway, the
//! group rolls back and every member runs again alone ([`attempts::run`]).
//! A member's answer stands only if the whole group committed: a member
//! that read another's uncommitted write (two members on one stream) is
//! never answered from a group that rolled back. A refusal writes nothing,
//! so it does not roll its group back (a user's refused command cannot
//! make the others' work be done twice). A `COMMIT` that fails leaves every
//! member's outcome unknown (`503`), as it would alone.
//!
//! Two members on one stream hold its lock together (the lock is the
//! transaction's): the second appends after the first if it read the
//! stream after it, or loses the race, and the group is redone alone. Two
//! groups each waiting for a stream the other holds deadlock; Postgres
//! breaks it after `deadlock_timeout`, and the group it aborts is redone
//! alone.
//!
//! [`attempts::run`]: crate::attempts::run

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use connections_store::StoreError;
use deadpool_postgres::Object;
use tokio::sync::{watch, Notify};

use crate::attempts::{self, Attempt, Step};
use crate::problem::ApiError;
use crate::state::AppState;

/// How many commands a group takes by default. On the command mix at
/// concurrency 32 (`bench commands`, 2 cores), groups of 8 filled to about 7
/// and ran 0.32 of the raw append floor, 16 and 32 about 0.35; 16 keeps
/// what one slow or refused member costs the others smaller.
pub const DEFAULT_GROUP_SIZE: usize = 16;

/// The group that takes new members, and how large groups grow.
pub struct CommitGroups {
    /// The most members in a group; 1 runs every command alone.
    size: AtomicUsize,
    /// The group taking members, if any (a closed or finished one is
    /// skipped; it does not keep its connection out of the pool).
    open: Mutex<Weak<Group>>,
    /// Held while a group is being opened: commands that find none open
    /// meanwhile join the one being opened instead of each opening its own
    /// (and each waiting for a connection when the pool runs short).
    opening: tokio::sync::Mutex<()>,
    /// Groups committed, and the members they committed (tests, benchmarks).
    committed_groups: AtomicU64,
    committed_members: AtomicU64,
}

impl std::fmt::Debug for CommitGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitGroups").field("size", &self.size()).finish_non_exhaustive()
    }
}

impl Default for CommitGroups {
    fn default() -> Self {
        Self::new(DEFAULT_GROUP_SIZE)
    }
}

impl CommitGroups {
    /// Groups of at most `size` commands (1: every command alone).
    pub fn new(size: usize) -> Self {
        Self {
            size: AtomicUsize::new(size.max(1)),
            open: Mutex::new(Weak::new()),
            opening: tokio::sync::Mutex::new(()),
            committed_groups: AtomicU64::new(0),
            committed_members: AtomicU64::new(0),
        }
    }

    /// The most members in a group.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Changes the most members in a group, for groups opened from now on
    /// (benchmarks compare sizes on one server).
    pub fn set_size(&self, size: usize) {
        self.size.store(size.max(1), Ordering::Relaxed);
    }

    /// How many groups have committed, and how many members in all.
    pub fn committed(&self) -> (u64, u64) {
        (self.committed_groups.load(Ordering::Relaxed), self.committed_members.load(Ordering::Relaxed))
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Weak<Group>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the open group if it takes members.
    fn try_join(&self) -> Option<Member> {
        let group = self.open().upgrade()?;
        let size = self.size();
        {
            let mut members = group.members();
            if members.closed || members.joined >= size {
                return None;
            }
            members.joined += 1;
            members.closed = members.joined >= size;
        }
        Some(Member { group, reported: false })
    }

    /// Joins the open group, or opens one on a connection from the
    /// commands' pool and finishes it in a task of its own.
    async fn join(self: &Arc<Self>, app: &AppState) -> Result<Member, StoreError> {
        if let Some(member) = self.try_join() {
            return Ok(member);
        }
        let _opening = self.opening.lock().await;
        if let Some(member) = self.try_join() {
            return Ok(member);
        }
        let client = app.database.client().await?;
        let group = Arc::new(Group::new(client));
        // BEGIN is on its way before anyone can find the group, so it goes
        // ahead of every member's statements: the first poll sends it.
        let mut begin = Box::pin({
            let group = group.clone();
            async move { group.client().batch_execute("BEGIN").await }
        });
        let begun = match futures::poll!(begin.as_mut()) {
            std::task::Poll::Ready(begun) => futures::future::Either::Left(futures::future::ready(begun)),
            std::task::Poll::Pending => futures::future::Either::Right(begin),
        };
        *self.open() = Arc::downgrade(&group);
        let (signals, database) = (app.signals.clone(), app.database.clone());
        tokio::spawn(finish(self.clone(), group.clone(), begun, signals, database));
        Ok(Member { group, reported: false })
    }
}

/// A transaction that commands share.
struct Group {
    /// The connection, until the group is dropped: returned to the pool if
    /// the transaction ended, closed otherwise (the server rolls back).
    client: Option<Object>,
    ended: AtomicBool,
    members: Mutex<Members>,
    /// Woken whenever a member is done.
    done: Notify,
    outcome: watch::Sender<Option<Outcome>>,
}

#[derive(Default)]
struct Members {
    joined: usize,
    done: usize,
    /// No one joins any more.
    closed: bool,
    /// A member came to neither a commit nor a refusal: the group rolls back.
    failed: bool,
    /// A member appended events: the relay is told of the commit.
    appended: bool,
}

/// How a group ended.
#[derive(Clone)]
enum Outcome {
    Committed,
    RolledBack,
    /// The `COMMIT` failed: it may or may not have happened.
    Unknown(Arc<StoreError>),
}

impl Group {
    fn new(client: Object) -> Self {
        Self {
            client: Some(client),
            ended: AtomicBool::new(false),
            members: Mutex::new(Members { joined: 1, ..Members::default() }),
            done: Notify::new(),
            outcome: watch::Sender::new(None),
        }
    }

    fn client(&self) -> &Object {
        self.client.as_ref().expect("the connection is held until the group is dropped")
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !*self.ended.get_mut() {
                // Detach from the pool: closing the connection rolls back.
                drop(Object::take(client));
            }
        }
    }
}

/// A command's place in a group.
struct Member {
    group: Arc<Group>,
    reported: bool,
}

impl Member {
    /// Reports this member done (`failed`: it came to neither a commit nor
    /// a refusal), and waits for the group's outcome.
    async fn done(mut self, failed: bool, appended: bool) -> Outcome {
        let mut outcome = self.group.outcome.subscribe();
        self.report(failed, appended);
        let outcome = outcome.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
        // The sender lives in the group, which this member holds.
        outcome.ok().flatten().unwrap_or(Outcome::RolledBack)
    }

    fn report(&mut self, failed: bool, appended: bool) {
        self.reported = true;
        {
            let mut members = self.group.members();
            members.done += 1;
            members.closed = true;
            members.failed |= failed;
            members.appended |= appended;
        }
        self.group.done.notify_one();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Cancelled midway (its request went away): what it sent is unknown.
        if !self.reported {
            self.report(true, false);
        }
    }
}

/// Waits until every member is done, then commits (or rolls back), tells
/// the relay of the commit, and announces the outcome to the members.
async fn finish(
    groups: Arc<CommitGroups>,
    group: Arc<Group>,
    begun: impl std::future::Future<Output = Result<(), deadpool_postgres::tokio_postgres::Error>>,
    signals: connections_fanout::Signals,
    database: connections_store::Database,
) {
    let begun = begun.await;
    let (members, failed, appended) = loop {
        let notified = group.done.notified();
        {
            let members = group.members();
            if members.closed && members.done == members.joined {
                break (members.joined, members.failed, members.appended);
            }
        }
        notified.await;
    };
    let client = group.client();
    let outcome = if begun.is_err() || failed {
        if client.batch_execute("ROLLBACK").await.is_ok() {
            group.ended.store(true, Ordering::Relaxed);
        }
        Outcome::RolledBack
    } else {
        match client.batch_execute("COMMIT").await {
            Ok(()) => {
                group.ended.store(true, Ordering::Relaxed);
                groups.committed_groups.fetch_add(1, Ordering::Relaxed);
                groups.committed_members.fetch_add(members as u64, Ordering::Relaxed);
                if appended {
                    signals.committed(&database);
                }
                Outcome::Committed
            }
            Err(error) => Outcome::Unknown(Arc::new(error.into())),
        }
    };
    let label = match outcome {
        Outcome::Committed => "committed",
        Outcome::RolledBack => "rolled_back",
        Outcome::Unknown(_) => "unknown",
    };
    connections_metrics::COMMIT_GROUPS.inc(&[label]);
    connections_metrics::COMMIT_GROUP_COMMANDS.add(&[label], members as u64);
    group.outcome.send_replace(Some(outcome));
}

/// Runs `attempt` in a commit group (alone when groups hold one command,
/// when no connection is free, or when its group rolled back).
pub(crate) async fn run<A: Attempt>(app: &AppState, attempt: &A) -> Result<A::Output, ApiError> {
    let groups = &app.settings.commit_groups;
    if groups.size() <= 1 {
        return attempts::run(app, attempt).await;
    }
    let member = match groups.join(app).await {
        Ok(member) => member,
        // The runner alone waits and retries as it does for any command.
        Err(_) => return attempts::run(app, attempt).await,
    };
    let step = attempt.attempt(member.group.client(), 1).await;
    let (answer, failed, appended) = match step {
        Ok(Step::Commit { answer: Ok(answer), notify }) => (Some(Ok(answer)), false, notify),
        // A command's refusal (without an idempotency key: nothing stored)
        // wrote nothing but, at most, a long stream's keyed copy rebuilt to
        // the log's version, which is right to keep: its answer stands if
        // the group commits. It may rest on another member's write to its
        // stream; that write then commits too.
        Ok(Step::RollBack(refused)) => (Some(refused), false, false),
        // A refusal stored with a key, a lost race, a failure: nothing of
        // the group is kept, and each member runs alone.
        Ok(Step::Commit { answer: Err(_), .. } | Step::Again) | Err(_) => (None, true, false),
    };
    match (member.done(failed, appended).await, answer) {
        (Outcome::Committed, Some(answer)) => answer,
        (Outcome::Unknown(error), Some(_)) => Err(ApiError::OutcomeUnknown(Box::new(SharedStoreError(error)))),
        _ => attempts::run(app, attempt).await,
    }
}

/// A commit's failure, shared by the members it leaves in doubt.
#[derive(Debug)]
struct SharedStoreError(Arc<StoreError>);

impl std::fmt::Display for SharedStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
