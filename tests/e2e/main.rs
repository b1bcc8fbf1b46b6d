//! End-to-end: the real `connections` binary against the real Postgres.

mod cli;
mod fanout;
mod readme;
mod secrets;
