//! Output: the targets checked against the figures, and the report as Markdown and JSON.

use std::time::Duration;

use serde_json::json;

use crate::opts::Opts;
use crate::report::{fmt_num, Figure, Report};

pub fn target_check(report: &Report) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let b = "1. backlog drain, 100-row txns";
    let one = "1. backlog drain, 1-row txns";
    let max_rss = report
        .figures
        .iter()
        .filter(|f| {
            f.name.starts_with("relay peak RSS")
                || f.name.starts_with("relay catch-up peak RSS")
                || f.name.starts_with("peak RSS at")
        })
        .map(|f| f.max())
        .fold(f64::NAN, f64::max);
    let mut check = |what: &str, fig: Option<&Figure>, ok: &dyn Fn(f64) -> bool, unit: &str| {
        if let Some(f) = fig {
            let m = f.median();
            out.push((what.to_string(), format!("{} {unit}", fmt_num(m)), ok(m)));
        }
    };
    check(
        "drain >= 85% of decoding limit (100-row txns)",
        report.get(b, "relay / limit"),
        &|v| v >= 0.85,
        "",
    );
    check(
        "drain >= 85% of decoding limit (1-row txns)",
        report.get(one, "relay / limit"),
        &|v| v >= 0.85,
        "",
    );
    check(
        "catch-up drain >= 1.5x decoding limit (1M backlog, 100-row txns)",
        report.get(b, "relay catch-up / limit"),
        &|v| v >= 1.5,
        "x",
    );
    check(
        "drain >= 3x Debezium (100-row txns)",
        report.get(b, "relay / Debezium"),
        &|v| v >= 3.0,
        "x",
    );
    check(
        "drain >= 3x Debezium (1-row txns)",
        report.get(one, "relay / Debezium"),
        &|v| v >= 3.0,
        "x",
    );
    check(
        "p99 < 50 ms at 2k events/s",
        report.get(
            "4. steady state (2k events/s, 1-row txns)",
            "relay latency p99 (pg_commit_ts)",
        ),
        &|v| v < 50.0,
        "ms",
    );
    check(
        "relay CPU per event <= 1.2x pg_recvlogical's own, streaming (100-row txns)",
        report.get(b, "relay CPU / pg_recvlogical CPU"),
        &|v| v <= 1.2,
        "x",
    );
    check(
        "<= 5 CPU s per 1M events (1M backlog, 100-row txns)",
        report.get(b, "relay CPU per 1M events"),
        &|v| v <= 5.0,
        "CPU s",
    );
    check(
        "<= 5 CPU s per 1M events (1-row txns)",
        report.get(one, "relay CPU per 1M events"),
        &|v| v <= 5.0,
        "CPU s",
    );
    if !max_rss.is_nan() {
        out.push((
            "relay RSS < 40 MB (max over all runs)".into(),
            format!("{} MB", fmt_num(max_rss)),
            max_rss < 40.0,
        ));
    }
    out
}

pub fn markdown(opts: &Opts, report: &Report, total: Duration) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# outbox-relay benchmark ({} mode, {} run(s) per figure unless noted, {} cores, total {:.1} min)\n\n",
        if opts.quick { "quick" } else { "full" },
        opts.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        total.as_secs_f64() / 60.0
    ));
    s.push_str("| section | figure | median | min | max | unit | runs |\n|---|---|---:|---:|---:|---|---:|\n");
    for f in &report.figures {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.section,
            f.name,
            fmt_num(f.median()),
            fmt_num(f.min()),
            fmt_num(f.max()),
            f.unit,
            f.runs.len()
        ));
    }
    s.push_str("\n| target | measured (median) | met |\n|---|---:|---|\n");
    for (what, v, ok) in target_check(report) {
        s.push_str(&format!(
            "| {what} | {v} | {} |\n",
            if ok { "yes" } else { "**no**" }
        ));
    }
    if !report.notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in &report.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

pub fn to_json(opts: &Opts, report: &Report, total: Duration) -> serde_json::Value {
    json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "runs_per_figure": opts.runs,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "total_seconds": total.as_secs_f64(),
        "sizes": {
            "backlog_100_row_txns": opts.rows_batched,
            "backlog_1_row_txns": opts.rows_single,
            "steady_rate_per_s": opts.steady_rate,
            "steady_seconds": opts.steady_secs,
            "scaling": opts.scaling.iter().map(|(n, r)| json!({"rows": n, "runs": r})).collect::<Vec<_>>(),
        },
        "figures": report.figures.iter().map(|f| json!({
            "section": f.section,
            "name": f.name,
            "unit": f.unit,
            "median": f.median(),
            "min": f.min(),
            "max": f.max(),
            "runs": f.runs,
        })).collect::<Vec<_>>(),
        "targets": target_check(report).into_iter().map(|(w, v, ok)| json!({"target": w, "measured": v, "met": ok})).collect::<Vec<_>>(),
        "notes": report.notes,
    })
}
