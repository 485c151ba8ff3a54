//! `outbox-relay doctor --config F [--json] [--probe-writes]`: one checklist of everything that
//! decides whether the relay will work, each line ok / warn / fail (or skip, with why), naming
//! what it checked and, for warn and fail, the fix. It changes nothing.
//!
//! ```text
//!  postgres/  connection, version, wal_level, slots and walsenders free, role, table, columns,
//!             SELECT, publication, a replication connection (pg_hba.conf), WAL retention,
//!             slot, failover                                    -> Facts (system id, slot, timeline)
//!  kafka/     bootstrap, transaction.max.timeout.ms, topics, checkpoint, resume point,
//!             idempotent write, transactional id, writes (--probe-writes)
//!  check.rs   the line: server, check, subject, status, detail, fix
//! ```
//!
//! `validate --connect` stays the fast check (`relay::preflight`, what the unit runs before
//! start): it stops at the first problem. The doctor goes on, so one run lists everything.
//!
//! Exit code: 0 when no check failed (warnings allowed), [`EXIT_FAILED`] when one did, 78 when the
//! configuration cannot be read (`main.rs`).

pub mod check;
pub mod kafka;
pub mod postgres;

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

pub use check::{Check, Server, Status};

use crate::config::{Config, OnError};
use crate::sink::SinkSettings;
use crate::source::SourceSettings;

/// Exit code when at least one check failed (0-2 are taken by `status`' health verdict, the
/// others by the relay's own codes).
pub const EXIT_FAILED: u8 = 3;

/// The checklist.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The configuration file checked.
    pub config: String,
    /// `host:port` of Postgres.
    pub postgres: String,
    /// The Kafka bootstrap servers.
    pub kafka: String,
    /// Whether no check failed.
    pub ok: bool,
    /// How many lines of each status.
    pub summary: Summary,
    /// Every line, Postgres first.
    pub checks: Vec<Check>,
}

/// Counts by status.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Passed.
    pub ok: usize,
    /// Warnings.
    pub warn: usize,
    /// Failures.
    pub fail: usize,
    /// Not checked.
    pub skip: usize,
}

impl Report {
    fn new(config: &Path, src: &SourceSettings, sink: &SinkSettings, checks: Vec<Check>) -> Self {
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Ok => summary.ok += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
                Status::Skip => summary.skip += 1,
            }
        }
        Report {
            config: config.display().to_string(),
            postgres: src.address(),
            kafka: sink.client.servers().to_string(),
            ok: summary.fail == 0,
            summary,
            checks,
        }
    }

    /// 0, or [`EXIT_FAILED`].
    pub fn exit_code(&self) -> u8 {
        if self.ok {
            0
        } else {
            EXIT_FAILED
        }
    }
}

/// The topics the relay writes, and why the routed ones cannot all be listed (a template with a
/// placeholder names a topic per aggregate type).
pub fn topics(cfg: &Config) -> (Vec<(kafka::Role, String)>, Option<String>) {
    let mut topics = vec![(kafka::Role::Checkpoint, cfg.kafka.checkpoint_topic.clone())];
    let mut routed: Vec<String> = cfg.routing.topics.values().cloned().collect();
    let template = &cfg.routing.topic_template;
    let unlisted = if cfg.routing.strict {
        None
    } else if template.contains("{aggregate_type}") {
        Some(format!(
            "routing.topic_template {template:?} names a topic per aggregate type: they cannot be listed in advance (events of an aggregate type whose topic is missing are dead-lettered); list them in [routing.topics] to have them checked"
        ))
    } else {
        routed.push(template.clone());
        None
    };
    routed.sort();
    routed.dedup();
    topics.extend(routed.into_iter().map(|t| (kafka::Role::Routed, t)));
    if cfg.errors.on_error == OnError::DeadLetter {
        topics.push((
            kafka::Role::DeadLetter,
            cfg.errors.dead_letter_topic.clone(),
        ));
    }
    (topics, unlisted)
}

/// Runs every check against both servers. Changes nothing.
pub async fn collect(config: &Path, cfg: &Config, probe_writes: bool) -> Report {
    let src = SourceSettings::from_config(cfg);
    let sink = SinkSettings::from_config(cfg);
    let mut checks = Vec::new();
    let facts = postgres::run(&src, &mut checks).await;
    let (topics, unlisted) = topics(cfg);
    let plan = kafka::Plan {
        sink: sink.clone(),
        source: src.clone(),
        topics,
        unlisted,
        probe_writes,
    };
    kafka::run(&plan, &facts, &mut checks).await;
    Report::new(config, &src, &sink, checks)
}

/// The text form: one line per check, the fix under it.
pub fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "outbox-relay doctor: {}", r.config);
    let mut server = None;
    for c in &r.checks {
        if server != Some(c.server) {
            server = Some(c.server);
            let _ = match c.server {
                Server::Postgres => writeln!(o, "postgres {}", r.postgres),
                Server::Kafka => writeln!(o, "kafka {}", r.kafka),
            };
        }
        let _ = writeln!(
            o,
            "  {:<6} {}: {}",
            format!("[{}]", c.status.as_str()),
            c.label(),
            c.detail
        );
        if let Some(fix) = &c.fix {
            let _ = writeln!(o, "         fix: {fix}");
        }
    }
    let s = &r.summary;
    let _ = writeln!(
        o,
        "{} ok, {} warn, {} fail, {} skipped: {}",
        s.ok,
        s.warn,
        s.fail,
        s.skip,
        if r.ok {
            "the relay can run"
        } else {
            "the relay will not work until each fail is fixed"
        }
    );
    o
}

/// Runs the subcommand: prints the checklist (text or JSON) and returns its exit code.
pub async fn run(config: &Path, cfg: &Config, json: bool, probe_writes: bool) -> ExitCode {
    let report = collect(config, cfg, probe_writes).await;
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", text(&report));
    }
    ExitCode::from(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_groups_by_server_and_puts_the_fix_under_its_line() {
        let src = crate::source::tests::settings("disable", None);
        let sink = crate::sink::tests::settings();
        let r = Report::new(
            Path::new("/etc/outbox-relay/outbox-relay.toml"),
            &src,
            &sink,
            vec![
                Check::ok(Server::Postgres, "wal_level", "logical"),
                Check::fail(Server::Kafka, "topic", "does not exist", "create it").on("t.a"),
                Check::skip(Server::Kafka, "write", "not proved"),
            ],
        );
        assert_eq!(r.exit_code(), EXIT_FAILED);
        let t = text(&r);
        assert!(
            t.contains("postgres db.example:5432\n  [ok]   wal_level: logical\n"),
            "{t}"
        );
        assert!(
            t.contains("kafka 127.0.0.1:9092\n  [fail] topic \"t.a\": does not exist\n         fix: create it\n"),
            "{t}"
        );
        assert!(t.contains("1 ok, 0 warn, 1 fail, 1 skipped"), "{t}");
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parses");
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["subject"], "t.a");
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["ok"], false);
    }

    #[test]
    fn routed_topics_are_listed_unless_the_template_has_a_placeholder() {
        let mut cfg = Config::default();
        cfg.routing
            .topics
            .insert("booking".into(), "bookings.v1".into());
        let (t, unlisted) = topics(&cfg);
        let names: Vec<&str> = t.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbox_relay.checkpoints",
                "bookings.v1",
                "outbox_relay.dead_letter"
            ]
        );
        assert!(unlisted.is_some_and(|u| u.contains("routing.topic_template")));
        cfg.routing.topic_template = "events".into();
        cfg.errors.on_error = OnError::Stop;
        let (t, unlisted) = topics(&cfg);
        assert_eq!(t.len(), 3);
        assert!(unlisted.is_none());
    }
}
