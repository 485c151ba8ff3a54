//! Tests of the audit report: the text and JSON forms of a sample report, the verdict and its exit code.

use super::*;

pub(crate) fn sample() -> Report {
    Report {
        verdict: "",
        exit_code: 255,
        window: WindowReport {
            kind: "since",
            rows_judged_from: Some("2026-11-26T05:00:00.000000Z".into()),
            from_lsn: None,
            to_lsn: None,
            margin_seconds: 60.0,
        },
        cut: CutReport {
            wal_insert_lsn: "0/1A2B3C8".into(),
            target_lsn: "0/1A2B3C8".into(),
            snapshot: "750:760:".into(),
            checkpoint_resume_lsn: "0/1A2B400".into(),
            waited_seconds: 0.5,
        },
        rows: RowsReport {
            table: "public.outbox".into(),
            judged: 10,
            context: 2,
            oldest_created_at: Some("2026-11-26T04:00:00.000000Z".into()),
        },
        kafka: KafkaReport {
            topics: vec![TopicReport {
                name: "outbox.booking".into(),
                partitions: 3,
                records: 11,
            }],
            records: 11,
            absent_topics: vec![],
        },
        findings: Findings::default(),
        resources: Resources {
            seconds: 1.0,
            events_per_second: 21.0,
            peak_rss_mib: 20.0,
            cpu_seconds: 0.5,
            sort_runs_on_disk: 0,
        },
    }
}

#[test]
fn a_clean_report_exits_0_and_says_so() {
    let mut r = sample();
    r.findings.dead_lettered.insert("reserved_header".into(), 2);
    r.findings.no_row_cleaned_up.add(5, || NoRow {
        event_id: "e1".into(),
        at: vec![],
    });
    r.decide();
    assert_eq!((r.verdict, r.exit_code), ("clean", EXIT_CLEAN));
    let text = r.text();
    assert!(
        text.contains("verdict: clean (0 discrepancies; exit 0)"),
        "{text}"
    );
    assert!(
        text.contains("dead-lettered           2 (reserved_header: 2)"),
        "{text}"
    );
    assert!(
        text.contains("rows created since 2026-11-26T05:00:00.000000Z"),
        "{text}"
    );
}

#[test]
fn each_finding_is_named_in_text_and_json() {
    let mut r = sample();
    let at = Location {
        topic: "outbox.booking".into(),
        partition: 1,
        offset: 7,
    };
    r.findings.missing.add(5, || MissingRow {
        event_id: "m-1".into(),
        topic: "outbox.booking".into(),
        created_at: None,
        found_elsewhere: vec![],
    });
    r.findings.duplicated.add(5, || Duplicate {
        event_id: "d-1".into(),
        copies: 2,
        at: vec![
            at.clone(),
            Location {
                offset: 9,
                ..at.clone()
            },
        ],
    });
    r.findings.no_row_never_existed.add(5, || NoRow {
        event_id: "n-1".into(),
        at: vec![at.clone()],
    });
    let pos = |offset, lsn: &str| StreamPosition {
        offset,
        pg_lsn: lsn.into(),
        pg_xid: 1,
        pg_commit_ts: "t".into(),
    };
    r.findings.order_violations.add(5, || OrderViolation {
        topic: "outbox.booking".into(),
        partition: 1,
        earlier: pos(3, "0/20"),
        later: pos(4, "0/10"),
    });
    r.findings.wrong_partition.add(5, || WrongPartition {
        event_id: Some("w-1".into()),
        key: "k".into(),
        at: at.clone(),
        expected_partition: 2,
    });
    // Counted beyond the examples kept.
    for _ in 0..3 {
        r.findings
            .missing
            .add(1, || unreachable!("only one example is kept"));
    }
    r.decide();
    assert_eq!(
        (r.verdict, r.exit_code),
        ("discrepancies", EXIT_DISCREPANCY)
    );
    assert_eq!(r.findings.discrepancies(), 8);
    let text = r.text();
    for needle in [
        "missing                 4",
        "m-1 -> outbox.booking",
        "d-1 x2: outbox.booking/1@7, outbox.booking/1@9",
        "n-1: outbox.booking/1@7",
        "outbox.booking/1: @4 (pg_lsn 0/10",
        "after @3 (pg_lsn 0/20",
        "outbox.booking/1@7 key \"k\" event w-1: expected partition 2",
        "verdict: discrepancies (8 discrepancies; exit 3)",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&r).expect("serializes")).expect("json");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["findings"]["missing"]["count"], 4);
    assert_eq!(
        json["findings"]["duplicated"]["examples"][0]["event_id"],
        "d-1"
    );
    assert_eq!(
        json["findings"]["wrong_partition"]["examples"][0]["expected_partition"],
        2
    );
}
