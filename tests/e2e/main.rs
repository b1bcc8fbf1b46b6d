//! End-to-end: the real `connections` binary against the real Postgres.

mod agents;
mod audit;
mod cli;
mod cluster;
mod fanout;
mod nats_security;
mod oauth;
mod operations;
mod page;
mod readme;
mod rekey;
mod review;
mod secrets;
