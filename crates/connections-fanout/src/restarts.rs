//! Restarting a long-running session (relay, projector) after a failure.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The first pause after a failure.
const FIRST: Duration = Duration::from_millis(100);
/// The longest pause.
const LONGEST: Duration = Duration::from_secs(2);
/// A session that ran this long before failing was healthy: the pause
/// after it starts again from [`FIRST`].
const HEALTHY: Duration = Duration::from_secs(10);

/// Exponential backoff between sessions, from 100 ms to at most 2 s,
/// interrupted by shutdown. Failures in a row back off; a failure after a
/// session that ran for 10 s or more starts again from 100 ms, so that a
/// long-lived instance does not pay the longest pause for every rare
/// failure.
pub struct Restarts {
    delay: Duration,
    started: Instant,
}

impl Restarts {
    /// Starts at 100 ms.
    pub fn new() -> Self {
        Self { delay: FIRST, started: Instant::now() }
    }

    /// Records that a session starts now.
    pub fn session_starts(&mut self) {
        self.started = Instant::now();
    }

    /// Logs why `task`'s session ended and waits before the next one (or
    /// until shutdown).
    pub async fn after_failure(
        &mut self,
        task: &str,
        error: &impl std::fmt::Display,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        if self.started.elapsed() >= HEALTHY {
            self.delay = FIRST;
        }
        tracing::warn!(task, %error, pause_ms = self.delay.as_millis() as u64, "session ended; restarting");
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = shutdown.changed() => {}
        }
        self.delay = (self.delay * 2).min(LONGEST);
    }
}

impl Default for Restarts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause after a session that ran for `ran`.
    async fn pause_after(restarts: &mut Restarts, ran: Duration, shutdown: &mut watch::Receiver<bool>) -> Duration {
        restarts.session_starts();
        tokio::time::sleep(ran).await;
        let before = Instant::now();
        restarts.after_failure("test", &"failed", shutdown).await;
        before.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_back_off_and_a_healthy_session_starts_again_from_the_first_pause() {
        let (_stop, mut shutdown) = watch::channel(false);
        let mut restarts = Restarts::new();
        let mut pauses = Vec::new();
        for _ in 0..6 {
            pauses.push(pause_after(&mut restarts, Duration::from_millis(10), &mut shutdown).await.as_millis());
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000]);
        // A session that ran for a minute, then failed.
        assert_eq!(pause_after(&mut restarts, Duration::from_secs(60), &mut shutdown).await.as_millis(), 100);
        assert_eq!(pause_after(&mut restarts, Duration::from_millis(10), &mut shutdown).await.as_millis(), 200);
    }
}
