//! The binary's other subcommands.

use std::process::Command;

use connections_e2e::{binary, JWT_SECRET};
use connections_testkit::{drop_database, unique_database};

#[test]
fn migrate_creates_the_database_and_is_idempotent() {
    let (name, url) = unique_database();
    for run in 0..2 {
        let output = Command::new(binary())
            .arg("migrate")
            .env("CONNECTIONS_DATABASE_URL", &url)
            .output()
            .expect("run connections migrate");
        assert!(output.status.success(), "migrate run {run} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    drop_database(&name);
}

#[test]
fn token_refuses_an_invalid_user_id_and_a_missing_secret() {
    let invalid = Command::new(binary())
        .args(["token", "--user", "not valid"])
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .output()
        .expect("run connections token");
    assert!(!invalid.status.success());
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("--user"));
    let no_secret = Command::new(binary())
        .args(["token", "--user", "alice"])
        .env_remove("CONNECTIONS_JWT_SECRET")
        .output()
        .expect("run connections token");
    assert!(!no_secret.status.success());
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("CONNECTIONS_JWT_SECRET"));
}

#[test]
fn serve_refuses_to_start_without_a_master_key() {
    let output = Command::new(binary())
        .arg("serve")
        .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .env_remove("CONNECTIONS_MASTER_KEY")
        .env_remove("CONNECTIONS_MASTER_KEY_FILE")
        .output()
        .expect("run connections serve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("CONNECTIONS_MASTER_KEY"));
}
