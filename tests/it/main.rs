//! Integration tests of outbox-relay against a real Postgres and a real Kafka broker, both started by the
//! dev harness (`outbox-relay-dev`) once per test binary. One binary (`it`) so the servers start once;
//! each file proves one promise, and `support` holds what they share.

mod audit;
mod bounded_resources;
mod catchup;
mod clear_failure;
mod dead_letters;
mod doctor;
mod exactly_once;
mod failover;
mod harness;
mod messages;
mod one_writer;
mod operations;
mod order;
mod reset;
mod security;
mod service;
mod ship;
mod support;
