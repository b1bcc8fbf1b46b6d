//! Restarting a long-running session (relay, projector) after a failure.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff between sessions, from 100 ms to at most 2 s,
/// interrupted by shutdown.
pub struct Restarts {
    delay: Duration,
}

impl Restarts {
    /// Starts at 100 ms.
    pub fn new() -> Self {
        Self { delay: Duration::from_millis(100) }
    }

    /// Logs why `task`'s session ended and waits before the next one (or
    /// until shutdown).
    pub async fn after_failure(
        &mut self,
        task: &str,
        error: &impl std::fmt::Display,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        tracing::warn!(task, %error, "session ended; restarting");
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = shutdown.changed() => {}
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
    }
}

impl Default for Restarts {
    fn default() -> Self {
        Self::new()
    }
}
