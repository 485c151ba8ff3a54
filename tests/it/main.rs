//! Integration tests of outbox-relay against a real Postgres and a real Kafka broker, both started by the
//! dev harness (`outbox-relay-dev`) once per test binary. One binary (`it`) so the servers start once;
//! each area of tests is a module.

mod audit;
mod badconfig;
mod common;
mod core;
mod docs;
mod faults;
mod foundation;
mod poison;
mod security;
mod service;
mod ship;
