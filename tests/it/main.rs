//! Integration tests of outbox-relay against a real Postgres and a real Kafka broker, both started by the
//! dev harness (`outbox-relay-dev`) once per test binary. One binary (`it`) so the servers start once;
//! each area of tests is a module.

mod badconfig;
mod common;
mod core;
mod docs;
mod doctor;
mod faults;
mod foundation;
mod poison;
mod reset;
mod security;
mod service;
mod ship;
