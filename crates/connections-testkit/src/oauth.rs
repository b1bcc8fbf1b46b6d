//! A real OAuth 2.0 authorization server for tests: `tests/oauth/provider.mjs`
//! (oauth2-mock-server, installed by `ops/test` with `npm ci`) on a loopback
//! port, stopped on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// A running provider; commands change its next answers (see provider.mjs).
pub struct OauthProvider {
    child: Child,
    stdin: Mutex<ChildStdin>,
    replies: Mutex<BufReader<std::process::ChildStdout>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl OauthProvider {
    /// Starts the provider and waits (bounded) for it to listen.
    pub fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oauth");
        assert!(
            dir.join("node_modules/oauth2-mock-server").exists(),
            "the test OAuth provider is not installed: run `npm ci --prefix tests/oauth` (ops/test does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/oauth/provider.mjs");
        let stdin = child.stdin.take().expect("stdin");
        let mut replies = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        replies.read_line(&mut line).expect("the provider's first line");
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line}")).to_owned();
        Self { child, stdin: Mutex::new(stdin), replies: Mutex::new(replies), base }
    }

    /// Sends one command (`error invalid_grant`, `status 500`, `garbage`,
    /// `scope a b`, `throttle 3`, `hold 500`, `expires 5`, `deny`,
    /// `revoke-status 503 2`, `refreshes`, `revocations`, `issued`) and waits for its
    /// acknowledgement, which it returns.
    pub fn command(&self, command: &str) -> String {
        writeln!(self.stdin.lock().expect("stdin"), "{command}").expect("send a command");
        let mut line = String::new();
        self.replies.lock().expect("replies").read_line(&mut line).expect("acknowledgement");
        assert!(line.starts_with("ok "), "the provider did not take {command:?}: {line}");
        line.trim().to_owned()
    }

    /// How many refresh-token grants the provider has answered.
    pub fn refreshes(&self) -> u64 {
        self.command("refreshes").rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
    }

    /// The tokens named by revocation requests answered 200, in order.
    pub fn revocations(&self) -> Vec<String> {
        self.command("revocations").split(' ').skip(3).map(str::to_owned).collect()
    }

    /// The last refresh token the provider issued.
    pub fn last_issued_refresh_token(&self) -> String {
        self.last_issued().0
    }

    /// The last (refresh token, access token) the provider issued.
    pub fn last_issued(&self) -> (String, String) {
        let reply = self.command("issued");
        let mut words = reply.split(' ').skip(2).map(str::to_owned);
        (words.next().expect("a refresh token"), words.next().expect("an access token"))
    }

    /// A providers file (`schemas/providers.v1.json`) for `services`, all on
    /// this provider, with the client secret in `client_secret_env`.
    pub fn providers_json(
        &self,
        redirect_uri: &str,
        services: &[&str],
        scopes: &[&str],
        client_secret_env: &str,
    ) -> String {
        let providers: Vec<String> = services
            .iter()
            .map(|service| {
                format!(
                    r#"{{"service": "{service}", "authorization_endpoint": "{base}/authorize", "token_endpoint": "{base}/token",
                        "revocation_endpoint": "{base}/revoke", "client_id": "client-{service}",
                        "client_secret_env": "{client_secret_env}", "scopes": [{scopes}]}}"#,
                    base = self.base,
                    scopes = scopes.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        format!(r#"{{"redirect_uri": "{redirect_uri}", "providers": [{}]}}"#, providers.join(", "))
    }
}

impl Drop for OauthProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
