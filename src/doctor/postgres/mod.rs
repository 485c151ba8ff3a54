//! The Postgres half of the checklist: the connection, server settings, the role, the table, the
//! publication, a real replication connection (pg_hba.conf), WAL retention, the slot, failover.
//!
//! Read-only: catalog and settings queries on the relay's own SQL connection
//! ([`Control`]), and one replication connection that runs IDENTIFY_SYSTEM and ends before
//! START_REPLICATION ([`crate::source::stream::identify`]), so the slot is never touched.
//!
//! One file per concern; this one connects, runs them in the order the lines appear, and gathers
//! the [`Facts`] the Kafka half needs. Each depends only on the files below it in this list:
//!
//! ```text
//!  server.rs      server_version, wal_level, room for a slot and a walsender, the role
//!  table.rs       the table, its columns, SELECT on it, the publication
//!  slot.rs        WAL retention (max_slot_wal_keep_size), the slot, failover
//!  connection.rs  why a connection was refused and its fix; the replication connection; ident
//! ```

mod connection;
mod server;
mod slot;
mod table;

pub use connection::ident;

use crate::doctor::check::{Check, Server};
use crate::source::stream::Identity;
use crate::source::{Control, SlotInfo, SourceSettings};

const PG: Server = Server::Postgres;

/// What the Kafka half needs from Postgres.
#[derive(Debug, Default)]
pub struct Facts {
    /// The system identifier (for the checkpoint key).
    pub system_id: Option<String>,
    /// The slot, when it could be read (`Some(None)`: it does not exist).
    pub slot: Option<Option<SlotInfo>>,
    /// What IDENTIFY_SYSTEM said (timeline and its history).
    pub identity: Option<Identity>,
}

impl Facts {
    /// Whether a session streams from the slot (`None`: unknown).
    pub fn slot_held(&self) -> Option<bool> {
        self.slot
            .as_ref()
            .map(|s| s.as_ref().is_some_and(|s| s.active))
    }
}

/// Runs every Postgres check, appending one line each to `out`.
pub async fn run(s: &SourceSettings, out: &mut Vec<Check>) -> Facts {
    let mut facts = Facts::default();
    let control = match Control::connect(s).await {
        Ok(c) => c,
        Err(e) => {
            out.push(connection::refused(
                "connection",
                s,
                &format!("connecting to {} as {:?}", s.address(), s.user),
                &e,
                None,
            ));
            out.push(Check::skip(
                PG,
                "remaining",
                "the other Postgres checks need a connection",
            ));
            return facts;
        }
    };
    let s = control.settings().clone();
    let client_addr: Option<String> = control
        .client()
        .query_one("SELECT host(inet_client_addr())", &[])
        .await
        .ok()
        .and_then(|r| r.get(0));
    out.push(Check::ok(
        PG,
        "connection",
        format!(
            "connected to {} database {:?} as {:?}",
            s.address(),
            s.dbname,
            s.user
        ),
    ));
    match checks(&control, &s, client_addr.as_deref(), out, &mut facts).await {
        Ok(()) => {}
        Err(e) => out.push(Check::fail(
            PG,
            "query",
            format!("a catalog query failed: {}", e.report()),
            "see the message; every other check above stands",
        )),
    }
    facts
}

/// Every check after the connection's, in the order the lines appear.
async fn checks(
    control: &Control,
    s: &SourceSettings,
    client_addr: Option<&str>,
    out: &mut Vec<Check>,
    facts: &mut Facts,
) -> crate::error::Result<()> {
    let version = server::version(control, out);
    server::wal_level(control, out).await?;
    // The slot (read first: whether it exists and is held decides the capacity checks).
    let slot = control.slot().await?;
    facts.slot = Some(slot.clone());
    server::capacity(control, slot.as_ref(), out).await?;
    server::role(control, s, out).await?;
    table::check(control, s, out).await?;
    let (system_id, identity) = connection::replication(control, s, client_addr, out).await?;
    facts.system_id = Some(system_id);
    facts.identity = identity;
    out.push(slot::retention(control).await?);
    out.push(slot::check(control, s, slot.as_ref()).await?);
    out.push(slot::failover(control, s, slot.as_ref(), &version).await?);
    Ok(())
}
