//! Connecting to NATS with settings that notice a dead server quickly.

use std::time::Duration;

/// Connects to `url`. The client pings every second (the default 60 s is far
/// too slow for anything that must fail closed) and reconnects forever.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url)
        .await
}
