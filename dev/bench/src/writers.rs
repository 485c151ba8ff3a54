//! Writers: a backlog of outbox rows written as fast as Postgres takes them, in transactions of a
//! given size, and the positions the drains are measured against.

use anyhow::{bail, Result};
use outbox_relay_dev::{Lsn, TestDb};

/// The INSERT of rows `$1..=$2` (one statement, one transaction when autocommitted): 3 aggregate
/// types, 10k aggregates, ~300-byte JSON payloads of incompressible hex.
pub const INSERT_RANGE: &str = "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) \
     SELECT (ARRAY['booking','car','customer'])[1 + (k % 3)], 'agg-' || k, 'Written', \
            jsonb_build_object('seq', g, 'agg', k, 'pad', \
              md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) || md5((g + 3)::text) || \
              md5((g + 4)::text) || md5((g + 5)::text) || md5((g + 6)::text) || md5((g + 7)::text)) \
     FROM generate_series($1::bigint, $2::bigint) AS g, LATERAL (SELECT (g * 7919) % 10000 AS k) AS x";

/// What a backlog write leaves: the LSN inside the last transaction before its commit (every
/// outbox transaction is published once a checkpoint's resume_lsn passes it) and the WAL end after.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub last_txn_lsn: Lsn,
    pub end_lsn: Lsn,
}

/// Writes `rows` outbox rows in transactions of `txn` rows over 4 connections, then a last
/// transaction of `txn` rows alone that records its position.
pub async fn write_backlog(db: &TestDb, rows: i64, txn: i64) -> Result<Backlog> {
    let writers = 4i64;
    let bulk = rows - txn;
    let per = bulk / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let from = w * per;
        let to = if w == writers - 1 { bulk } else { from + per };
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = db.client().await?;
            let stmt = client.prepare(INSERT_RANGE).await?;
            if txn == 1 {
                // One-row transactions (autocommit), pipelined 256 deep on the connection.
                let mut g = from;
                while g < to {
                    let end = (g + 256).min(to);
                    let ids: Vec<i64> = (g..end).collect();
                    let (client, stmt) = (&client, &stmt);
                    let futs = ids
                        .iter()
                        .map(|i| async move { client.execute(stmt, &[i, i]).await });
                    futures::future::try_join_all(futs).await?;
                    g = end;
                }
            } else {
                let mut g = from;
                while g < to {
                    let end = (g + txn).min(to);
                    client.execute(&stmt, &[&g, &(end - 1)]).await?;
                    g = end;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(INSERT_RANGE, &[&bulk, &(rows - 1)]).await?;
    let lsn: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    tx.commit().await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.outbox", &[])
        .await?
        .get(0);
    if n != rows {
        bail!("backlog has {n} rows, expected {rows}");
    }
    Ok(Backlog {
        last_txn_lsn: lsn.parse()?,
        end_lsn: end.parse()?,
    })
}
