//! `outbox-relay reset-checkpoint --config F [--to-lsn X/Y] [--dry-run] [--yes]`: what the
//! README runbooks used to have operators produce by hand.
//!
//! ```text
//!  show     the key <system id>/<db>/<slot>, the current checkpoint, the slot, the server
//!  refuse   a session holds the slot (75: stop the relay first); --to-lsn below the slot's
//!           confirmed_flush_lsn, past the server's WAL, or without a slot (65)
//!  --dry-run: stop here (0); no --yes: stop here (64)
//!  write    init_transactions with the relay's transactional.id (fences any zombie), then one
//!           Kafka transaction holding a tombstone for the key (the relay next publishes from the
//!           slot's position) or, with --to-lsn, a checkpoint at X on the server's current
//!           timeline (the relay next publishes transactions committed at or after X)
//! ```
//!
//! A running relay must not be reset under it: it would be fenced, and it acknowledges what it
//! read before the reset, so the slot could pass the new checkpoint. Hence the refusal while any
//! session holds the slot, checked again after fencing, just before the commit.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;
use crate::sink::producer::CommitError;
use crate::sink::{checkpoint, Checkpoint, CheckpointKey, Producer, SinkSettings};
use crate::source::stream;
use crate::source::{Control, SlotInfo, SourceSettings};

/// Exit code: `--yes` is missing (sysexits EX_USAGE).
pub const EXIT_UNCONFIRMED: u8 = 64;
/// Exit code: `--to-lsn` is not a position the relay can resume from (sysexits EX_DATAERR).
pub const EXIT_BAD_LSN: u8 = 65;
/// Exit code: a session holds the slot; stop the relay first (sysexits EX_TEMPFAIL).
pub const EXIT_RELAY_RUNNING: u8 = 75;

/// The command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Write a checkpoint at this position instead of a tombstone.
    pub to_lsn: Option<Lsn>,
    /// Show, change nothing, exit 0.
    pub dry_run: bool,
    /// The confirmation: without it, nothing is written (exit 64).
    pub yes: bool,
}

/// What the reset would write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A tombstone for the key.
    Tombstone,
    /// A checkpoint.
    At(Checkpoint),
}

/// Runs the subcommand; every outcome is printed, the exit code says which it was.
pub async fn run(cfg: &Config, opts: Options) -> ExitCode {
    let src = SourceSettings::from_config(cfg);
    let sink = SinkSettings::from_config(cfg);
    match reset(&src, &sink, opts).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn slot_text(info: Option<&SlotInfo>) -> String {
    match info {
        None => "does not exist".to_string(),
        Some(s) => format!(
            "confirmed_flush_lsn {}, restart_lsn {}, wal_status {}, {}",
            s.confirmed_flush_lsn
                .map_or_else(|| "-".into(), |l| l.to_string()),
            s.restart_lsn.map_or_else(|| "-".into(), |l| l.to_string()),
            s.wal_status.as_deref().unwrap_or("-"),
            match (s.active, s.active_pid) {
                (true, Some(pid)) => format!("held by pid {pid}"),
                (true, None) => "held".to_string(),
                (false, _) => "not held".to_string(),
            }
        ),
    }
}

fn checkpoint_text(cp: &Checkpoint) -> String {
    format!(
        "resume_lsn {}, timeline {}, partial {}",
        cp.resume_lsn,
        cp.timeline
            .map_or_else(|| "- (older relay)".into(), |t| t.to_string()),
        cp.partial.map_or_else(
            || "none".to_string(),
            |p| format!(
                "xid {} (commit {}): {} changes published",
                p.xid, p.final_lsn, p.next_index
            )
        )
    )
}

async fn reset(src: &SourceSettings, sink: &SinkSettings, opts: Options) -> Result<u8> {
    let within = sink.call_timeout.min(Duration::from_secs(30));
    let control = Control::connect(src).await?;
    let src = control.settings().clone();
    let system_id = control.system_identifier().await?;
    let key = CheckpointKey::new(&system_id, &src.dbname, &src.slot);
    let slot = control.slot().await?;
    let server_lsn = control.current_wal_lsn().await?;
    // The timeline a --to-lsn checkpoint records: IDENTIFY_SYSTEM on a replication connection.
    let identity = match opts.to_lsn {
        Some(_) => Some(stream::identify(&src).await?),
        None => None,
    };
    let current = tokio::task::block_in_place(|| {
        checkpoint::read(&sink.client, &sink.checkpoint_topic, &key, within)
    });
    // An unreadable checkpoint is what a reset is for (README: "Unreadable checkpoint").
    let (current, unreadable) = match current {
        Ok(cp) => (cp, None),
        Err(e) if e.kind() == Kind::Invariant => (None, Some(e.message().to_string())),
        Err(e) => return Err(e),
    };

    println!("checkpoint topic {:?}, key {key}", sink.checkpoint_topic);
    println!(
        "  current checkpoint:  {}",
        match (&current, &unreadable) {
            (Some(cp), _) => checkpoint_text(cp),
            (None, Some(why)) => format!("unreadable ({why})"),
            (None, None) => "none".to_string(),
        }
    );
    println!("  slot {:?}: {}", src.slot, slot_text(slot.as_ref()));
    println!(
        "  server:              WAL position {server_lsn}{}",
        identity
            .as_ref()
            .map_or_else(String::new, |i| format!(", timeline {}", i.timeline))
    );
    let target = match (opts.to_lsn, &identity) {
        (Some(at), Some(id)) => Target::At(Checkpoint {
            resume_lsn: at,
            partial: None,
            timeline: Some(id.timeline),
            snapshot: None,
        }),
        _ => Target::Tombstone,
    };
    let confirmed = slot.as_ref().and_then(|s| s.confirmed_flush_lsn);
    match &target {
        Target::Tombstone => {
            println!(
                "  would write:         a tombstone: the relay then publishes from the slot's position ({})",
                match (&slot, confirmed) {
                    (None, _) => "the slot does not exist: the relay creates it at its next start, at the server's current position, and events written before that are not published".to_string(),
                    (Some(_), Some(c)) => format!("confirmed_flush_lsn {c}"),
                    (Some(_), None) => "confirmed_flush_lsn unknown".to_string(),
                }
            );
            if let (Some(cp), Some(c)) = (&current, confirmed) {
                if c < cp.resume_lsn {
                    println!(
                        "  note:                transactions committed between {c} and {} are published again (duplicates)",
                        cp.resume_lsn
                    );
                }
                if let Some(p) = cp.partial {
                    println!(
                        "  note:                the first {} changes of xid {} (commit {}) are published again (duplicates)",
                        p.next_index, p.xid, p.final_lsn
                    );
                }
            }
        }
        Target::At(cp) => {
            println!(
                "  would write:         a checkpoint: {}; the relay then publishes the transactions committed at or after {}",
                checkpoint_text(cp),
                cp.resume_lsn
            );
        }
    }

    // Refusals.
    if let Some(s) = slot.as_ref().filter(|s| s.active) {
        println!(
            "refused: a session holds slot {:?}{}: stop the relay first (a running relay would be fenced, and it may acknowledge past the new checkpoint)",
            src.slot,
            s.active_pid.map_or_else(String::new, |p| format!(" (pid {p})"))
        );
        return Ok(EXIT_RELAY_RUNNING);
    }
    if let Target::At(cp) = &target {
        let at = cp.resume_lsn;
        let refusal = match confirmed {
            None => Some(format!(
                "slot {:?} does not exist: a checkpoint without its slot makes the relay stop (exit 70, lost slot). Create the slot first, or reset without --to-lsn",
                src.slot
            )),
            Some(c) if at < c => Some(format!(
                "--to-lsn {at} is below slot {:?}'s confirmed_flush_lsn {c}: the slot cannot go back, so the relay would stop at its start (exit 70: the slot is past the checkpoint). Give a position at or after {c}",
                src.slot
            )),
            _ if at > server_lsn => Some(format!(
                "--to-lsn {at} is past the server's WAL position {server_lsn}"
            )),
            _ => None,
        };
        if let Some(why) = refusal {
            println!("refused: {why}");
            return Ok(EXIT_BAD_LSN);
        }
    }
    if target == Target::Tombstone && current.is_none() && unreadable.is_none() {
        println!("nothing to reset: there is no checkpoint for this key");
        return Ok(0);
    }
    if opts.dry_run {
        println!("dry run: nothing written");
        return Ok(0);
    }
    if !opts.yes {
        println!("nothing written: add --yes to write it");
        return Ok(EXIT_UNCONFIRMED);
    }

    // Write, in a transaction of the relay's own transactional.id.
    let sink_for_write = sink.clone();
    let key_for_write = key.clone();
    let mut producer =
        tokio::task::block_in_place(|| Producer::connect(sink_for_write, key_for_write, within))?;
    // A relay that started meanwhile is fenced now; do not write under it.
    if control.slot().await?.is_some_and(|s| s.active) {
        println!(
            "refused: a session took slot {:?} meanwhile: stop the relay first (nothing written)",
            src.slot
        );
        return Ok(EXIT_RELAY_RUNNING);
    }
    let committed = tokio::task::block_in_place(|| match &target {
        Target::Tombstone => producer.commit_tombstone(),
        Target::At(cp) => producer.commit(cp),
    });
    committed.map_err(|e| match e {
        CommitError::Session(e) | CommitError::Refused { error: e, .. } => e,
    })?;
    let after = tokio::task::block_in_place(|| {
        checkpoint::read(&sink.client, &sink.checkpoint_topic, &key, within)
    })?;
    if after != target_checkpoint(&target) {
        return Err(Error::internal(format!(
            "the checkpoint read back after the reset is {after:?}, not what was written"
        )));
    }
    println!(
        "written: {} for key {key} in {:?} (transactional.id {:?}). The relay's next start {}",
        match &target {
            Target::Tombstone => "a tombstone".to_string(),
            Target::At(cp) => format!("a checkpoint at {}", cp.resume_lsn),
        },
        sink.checkpoint_topic,
        sink.transactional_id,
        match &target {
            Target::Tombstone => "publishes from the slot's position".to_string(),
            Target::At(cp) => format!(
                "publishes the transactions committed at or after {}",
                cp.resume_lsn
            ),
        }
    );
    Ok(0)
}

/// What reading the checkpoint back must give after writing `target` (the time it was written
/// is not part of it).
fn target_checkpoint(target: &Target) -> Option<Checkpoint> {
    match target {
        Target::Tombstone => None,
        Target::At(cp) => Some(cp.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Partial;

    #[test]
    fn what_is_shown_names_positions_and_the_holder() {
        let cp = Checkpoint {
            resume_lsn: Lsn(0x1_6000_0000),
            partial: Some(Partial {
                final_lsn: Lsn(0x1_7000_0000),
                xid: 42,
                next_index: 10,
            }),
            timeline: Some(2),
            snapshot: None,
        };
        assert_eq!(
            checkpoint_text(&cp),
            "resume_lsn 1/60000000, timeline 2, partial xid 42 (commit 1/70000000): 10 changes published"
        );
        let slot = SlotInfo {
            confirmed_flush_lsn: Some(Lsn(0x10)),
            active: true,
            active_pid: Some(7),
            wal_status: Some("reserved".into()),
            ..SlotInfo::default()
        };
        assert_eq!(
            slot_text(Some(&slot)),
            "confirmed_flush_lsn 0/10, restart_lsn -, wal_status reserved, held by pid 7"
        );
        assert_eq!(slot_text(None), "does not exist");
    }
}
