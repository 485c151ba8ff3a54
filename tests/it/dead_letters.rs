//! Rows that cannot be published go to the dead-letter topic with their reason, event id and LSN
//! in headers, exactly once (in the same Kafka transaction, across a kill -9), and published +
//! dead-lettered = written: bad values, unroutable rows, records too large, a topic the relay may
//! not write (ACL). With `on_error = "stop"` the relay stops at the bad row naming it instead,
//! and resumes without loss once the configuration is fixed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::slot_info;
use outbox_relay_dev::{
    shared_servers, verify, write_concurrently, write_txn, Kafka, NewEvent, Written,
};

use crate::support::{
    bin, insert_raw, secure, setup, spec, start, stop, topics, verdict, wait_published,
    wait_records,
};

fn dlq_by_id(records: &[outbox_relay_dev::Record]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        out.entry(r.header("event_id").unwrap_or("?").to_string())
            .or_default()
            .push(r.header("dlq_reason").unwrap_or("?").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_dead_lettered_exactly_once_with_their_reason() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let kafka = Kafka::shared();
    let client = db.client().await?;
    // A table laid out loosely, as some users have it: text payload and headers, nullable key.
    client
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload TYPE text, ALTER COLUMN headers TYPE text, \
             ALTER COLUMN aggregate_id DROP NOT NULL",
        )
        .await?;
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    let small = cfg.topic_for("small");
    kafka
        .create_topic(&small, 1, &[("max.message.bytes", "2000")])
        .await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    cfg.set("routing.strict", true);
    for t in ["booking", "car", "small", "missing"] {
        cfg.set(&format!("routing.topics.{t}"), cfg.topic_for(t));
    }
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;

    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10, 100], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // Incompressible (lz4 would shrink a repeated character below the topic's limit).
    let big = "(SELECT json_build_object('pad', string_agg(md5(random()::text), ''))::text FROM generate_series(1, 400))";
    let huge = "y".repeat(2_000_000);
    let cases: Vec<(&str, String)> = vec![
        (
            "payload_not_json",
            "'booking', 'b-1', 'E', 'not json', NULL".into(),
        ),
        ("null_column", "'booking', NULL, 'E', '{}', NULL".into()),
        (
            "empty_aggregate_id",
            "'booking', '', 'E', '{}', NULL".into(),
        ),
        ("unroutable", "'nowhere', 'n-1', 'E', '{}', NULL".into()),
        (
            "headers_not_object",
            "'booking', 'b-2', 'E', '{}', '[1,2]'".into(),
        ),
        (
            "headers_not_json",
            "'booking', 'b-3', 'E', '{}', '{oops'".into(),
        ),
        ("unknown_topic", "'missing', 'm-1', 'E', '{}', NULL".into()),
        (
            "record_too_large",
            format!("'small', 's-1', 'E', {big}, NULL"),
        ),
        (
            "record_too_large",
            format!("'booking', 'b-4', 'E', '{{\"pad\":\"{huge}\"}}', NULL"),
        ),
    ];
    let mut expected: HashMap<String, &str> = HashMap::new();
    for (i, (reason, values)) in cases.iter().enumerate() {
        let id = insert_raw(&client, values).await?;
        expected.insert(id, reason);
        if i == 4 {
            // Dead-lettering is transactional too: a kill in the middle changes nothing.
            relay.kill9().await?;
            relay = relay.respawn(&bin(), &[])?;
        }
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    wait_records(
        std::slice::from_ref(&dlq),
        expected.len(),
        Duration::from_secs(120),
    )
    .await?;
    stop(&mut relay).await?;
    let received = kafka.collect(&topics).await?;
    let verdict = verify(&written, &received);
    if !verdict.is_exactly_once() {
        eprintln!("relay logs:\n{}", relay.logs());
    }
    verdict.assert_exactly_once();
    let dead = kafka.collect(std::slice::from_ref(&dlq)).await?;
    let by_id = dlq_by_id(&dead);
    for (id, reason) in &expected {
        let got = by_id
            .get(id)
            .with_context(|| format!("{id} ({reason}) not dead-lettered"))?;
        ensure!(got.len() == 1, "{id} dead-lettered {} times", got.len());
        ensure!(
            got[0] == *reason,
            "{id}: expected reason {reason}, got {}",
            got[0]
        );
    }
    ensure!(
        by_id.len() == expected.len(),
        "unexpected dead letters: {by_id:?}"
    );
    for r in &dead {
        ensure!(r.header("pg_lsn").is_some() && r.header("dlq_detail").is_some());
    }
    // The original bytes are kept (except for records too large to carry).
    let not_json = dead
        .iter()
        .find(|r| r.header("dlq_reason") == Some("payload_not_json"))
        .context("payload_not_json record")?;
    ensure!(not_json.value_str() == Some("not json"));
    let published = received.len();
    eprintln!(
        "poison rows: written {}, published {published}, dead-lettered {}",
        written.len() + expected.len(),
        dead.len()
    );
    ensure!(published + dead.len() == written.len() + expected.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_payloads_arrive_as_bytes_and_bad_ones_are_dead_lettered() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, mut cfg) = setup(&["booking"]).await?;
    let kafka = Kafka::shared();
    let client = db.client().await?;
    client
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload TYPE bytea USING convert_to(payload::text, 'UTF8')",
        )
        .await?;
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    let mut relay = start(&cfg).await?;
    // Not UTF-8, so not JSON either.
    let bad = insert_raw(&client, "'booking', 'b-1', 'E', '\\xfffe'::bytea, NULL").await?;
    let good = insert_raw(
        &client,
        "'booking', 'b-2', 'E', convert_to('{\"ok\":true}', 'UTF8'), NULL",
    )
    .await?;
    let booking = [cfg.topic_for("booking")];
    wait_records(std::slice::from_ref(&dlq), 1, Duration::from_secs(60)).await?;
    wait_records(&booking, 1, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let dead = kafka.collect(&[dlq]).await?;
    let by_id = dlq_by_id(&dead);
    ensure!(
        by_id.get(&bad).map(|v| v[0].as_str()) == Some("payload_not_json"),
        "{by_id:?}\nrelay logs:\n{}",
        relay.logs()
    );
    ensure!(
        dead[0].value.as_deref() == Some(&[0xff, 0xfe][..]),
        "original bytes kept"
    );
    let published = kafka.collect(&booking).await?;
    ensure!(published.len() == 1 && published[0].header("event_id") == Some(good.as_str()));
    ensure!(
        published[0].value_str() == Some("{\"ok\":true}"),
        "a bytea payload must arrive as its bytes"
    );
    Ok(())
}

/// In a SQL_ASCII database a text column can hold bytes that are not UTF-8. The walsender then
/// refuses to send the row (it converts to the session's UTF-8): no client can see it, so the
/// relay stops with a clear message and exit 65 instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_stop_halts_at_a_bad_row_naming_it_and_resumes_without_loss_after_the_fix(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("errors.on_error", "stop");
    cfg.set("routing.strict", true);
    cfg.set("routing.topics.booking", cfg.topic_for("booking"));
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written: Vec<Written> = Vec::new();
    written.extend(
        write_txn(
            &mut client,
            &[NewEvent::new("booking", "b-1", "Created", "{\"n\":1}")],
        )
        .await?,
    );
    let bad = write_txn(
        &mut client,
        &[NewEvent::new("invoice", "i-1", "Created", "{}")],
    )
    .await?;
    let after = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b-1", "Changed", "{\"n\":2}")],
    )
    .await?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay did not stop on the bad row")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(65), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains(&bad[0].id.to_string()) && logs.contains("unroutable"),
        "{logs}"
    );
    // Nothing past the bad row is acknowledged.
    let slot = slot_info(&client, &cfg.slot).await?.context("slot")?;
    let kafka = Kafka::shared();
    let so_far = kafka.collect(&[cfg.topic_for("booking")]).await?;
    verify(&written, &so_far).assert_exactly_once();
    // The fix: route invoices too; the relay resumes without loss.
    kafka
        .create_topic(&cfg.topic_for("invoice"), 1, &[])
        .await?;
    cfg.set("routing.topics.invoice", cfg.topic_for("invoice"));
    let mut relay = start(&cfg).await?;
    written.extend(bad);
    written.extend(after);
    let topics = topics(&cfg, &["booking", "invoice"]);
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    eprintln!(
        "on_error=stop: stopped with 65 at the bad row (slot confirmed {:?}), resumed after the fix",
        slot.confirmed_flush_lsn
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_for_a_topic_the_relay_may_not_write_are_dead_lettered() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "secret"];
    let (db, mut cfg) = setup(&types).await?;
    secure(&mut cfg);
    let kafka = Kafka::shared();
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    let forbidden = cfg.topic_for("secret");
    let principal = format!("User:{}", Kafka::SASL_USER);
    kafka
        .add_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await?;
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(3_000, &types, &[1, 10], 2)).await?;
    let (allowed, denied): (Vec<_>, Vec<_>) = written
        .into_iter()
        .partition(|w| w.aggregate_type != "secret");
    let allowed_topic = [cfg.topic_for("booking")];
    wait_published(&allowed_topic, &allowed, Duration::from_secs(120)).await?;
    wait_records(
        std::slice::from_ref(&dlq),
        denied.len(),
        Duration::from_secs(120),
    )
    .await?;
    ensure!(relay.is_running(), "{}", relay.logs());
    stop(&mut relay).await?;
    let received = kafka.collect(&allowed_topic).await?;
    let dead = kafka.collect(std::slice::from_ref(&dlq)).await?;
    let in_forbidden = kafka
        .collect_uncommitted(std::slice::from_ref(&forbidden))
        .await?;
    let _ = kafka
        .remove_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await;
    let verdict = verify(&allowed, &received);
    let reasons: std::collections::BTreeMap<String, usize> =
        dead.iter().fold(Default::default(), |mut m, r| {
            *m.entry(r.header("dlq_reason").unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
    let dead_ids: std::collections::HashSet<&str> =
        dead.iter().filter_map(|r| r.header("event_id")).collect();
    eprintln!(
        "topic not authorized: written {} ({} to the forbidden topic), published {}, dead-lettered {} {reasons:?}; {verdict}",
        allowed.len() + denied.len(),
        denied.len(),
        received.len(),
        dead.len()
    );
    verdict.assert_exactly_once();
    ensure!(
        in_forbidden.is_empty(),
        "records reached the forbidden topic"
    );
    ensure!(
        dead.len() == denied.len() && dead_ids.len() == denied.len(),
        "dead-lettered {} (distinct {}) of {}",
        dead.len(),
        dead_ids.len(),
        denied.len()
    );
    ensure!(
        denied
            .iter()
            .all(|w| dead_ids.contains(w.id.to_string().as_str())),
        "a denied row is missing from the dead letters"
    );
    ensure!(
        reasons.keys().all(|k| k == "topic_not_authorized"),
        "{reasons:?}"
    );
    ensure!(received.len() + dead.len() == allowed.len() + denied.len());
    Ok(())
}
