//! A string that never prints itself.

use std::fmt;

/// A secret string. `Debug` prints `Secret([REDACTED])`; there is no
/// `Display` and no `Serialize`, so a secret cannot reach a log line, an error
/// or a JSON body by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a plaintext value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The plaintext. Call only where the secret must leave: sealing, or
    /// handing it to an authorized agent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-canary".into());
        assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{secret:#?}"), "Secret([REDACTED])");
    }
}
