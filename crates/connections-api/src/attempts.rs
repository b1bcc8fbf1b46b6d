//! The retry loop that commands and resolves share: one transaction per
//! attempt on the commands pool, decided again on fresh state after a lost
//! race, run again on another connection after a transient failure, and
//! answered `503` when every attempt met one.

use connections_store::{PipelinedTransaction, StoreError};
use deadpool_postgres::Object;

use crate::problem::ApiError;
use crate::state::AppState;

/// How many attempts a command or a resolve makes.
pub const MAX_ATTEMPTS: usize = 8;

/// What one attempt came to, when it did not fail.
pub(crate) enum Step<T> {
    /// Commit, then answer (`Err` too: a refusal stored for an idempotency
    /// key commits with it). `notify`: events were appended, so the relay is
    /// told of the commit.
    Commit { answer: Result<T, ApiError>, notify: bool },
    /// Roll back, then answer.
    RollBack(Result<T, ApiError>),
    /// Roll back and run the attempt again at once: what it read was
    /// changed by a transaction that has committed since (a revoke).
    Again,
}

/// Why an attempt failed.
pub(crate) enum AttemptError {
    /// Another writer won the race on the stream: decide again.
    Conflict,
    /// The database failed in a way that a new transaction on another
    /// connection may get past (see [`StoreError::is_transient`]).
    Transient(StoreError),
    /// The request is refused (a 4xx): an answer. A command stores it for
    /// its idempotency key before it reaches the runner, which rolls back.
    Refused(ApiError),
    /// Anything else: roll back and answer it.
    Fail(ApiError),
}

impl From<StoreError> for AttemptError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. } => AttemptError::Conflict,
            error if error.is_transient() => AttemptError::Transient(error),
            other => AttemptError::Fail(other.into()),
        }
    }
}

impl From<ApiError> for AttemptError {
    fn from(error: ApiError) -> Self {
        AttemptError::Fail(error)
    }
}

/// One attempt of a command or a resolve.
pub(crate) trait Attempt {
    /// The answer.
    type Output;

    /// Attempt number `number` (from 1), on `client`, in a transaction
    /// that the runner begins, and then commits or rolls back as the step
    /// says (a commit group's, shared with other commands: see
    /// [`crate::groups`]).
    fn attempt<'t>(
        &'t self,
        client: &'t Object,
        number: usize,
    ) -> impl std::future::Future<Output = Result<Step<Self::Output>, AttemptError>> + Send + 't;
}

/// Runs `attempt` until it commits or answers, at most [`MAX_ATTEMPTS`]
/// times. BEGIN is sent together with the attempt's first statements. A
/// commit that fails leaves the outcome unknown (`503 outcome-unknown`).
pub(crate) async fn run<A: Attempt>(app: &AppState, attempt: &A) -> Result<A::Output, ApiError> {
    let mut transient = None;
    for number in 1..=MAX_ATTEMPTS {
        let transaction = match app.database.client().await {
            Ok(client) => PipelinedTransaction::new(client),
            // None free in time (many attempts queued on one stream's lock,
            // say), or the server restarting: wait, and try again.
            Err(error) if error.is_transient() => {
                after_transient(number, &error).await;
                transient = Some(error);
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let (begun, outcome) = futures::join!(transaction.begin(), attempt.attempt(transaction.client(), number));
        let outcome = begun.map_err(AttemptError::from).and(outcome);
        match outcome {
            Ok(Step::Commit { answer, notify }) => {
                transaction.commit().await.map_err(ApiError::outcome_unknown)?;
                if notify {
                    app.signals.committed(&app.database);
                }
                return answer;
            }
            Ok(Step::RollBack(answer)) => {
                transaction.rollback().await?;
                return answer;
            }
            Ok(Step::Again) => transaction.rollback().await?,
            Err(AttemptError::Conflict) => {
                tracing::debug!(attempt = number, "optimistic concurrency conflict, retrying");
                transaction.rollback().await?;
                backoff(number).await;
            }
            Err(AttemptError::Transient(error)) => {
                // Nothing was committed: the attempt may run again on another
                // connection. This one may be broken, so it is not returned
                // to the pool (dropping the transaction closes it).
                drop(transaction);
                after_transient(number, &error).await;
                transient = Some(error);
            }
            Err(AttemptError::Refused(error) | AttemptError::Fail(error)) => {
                let _ = transaction.rollback().await;
                return Err(error);
            }
        }
    }
    match transient {
        Some(error) => Err(ApiError::Unavailable(Box::new(error))),
        None => Err(ApiError::ConcurrencyExhausted),
    }
}

/// A short random pause before retrying a lost race, growing with the
/// attempt, so that many writers on one stream do not collide in lockstep.
async fn backoff(attempt: usize) {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let micros = random % (500 * attempt as u64 + 1);
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
}

/// Logs a transient database failure of `attempt`, then pauses longer than
/// after a lost race: 5 ms doubling per attempt, so that the attempts span
/// about half a second (a restarting server or a full connection table may
/// recover in that time).
async fn after_transient(attempt: usize, error: &StoreError) {
    tracing::warn!(attempt, %error, cause = ?std::error::Error::source(error), "transient database failure, retrying");
    if attempt >= MAX_ATTEMPTS {
        return;
    }
    let millis = 5u64 << (attempt.min(8) - 1);
    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    backoff(attempt).await;
}
