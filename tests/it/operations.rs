//! Operating the relay as the README, the units and the compose file say (issue 14): each test fails
//! on the defect it was written for.
//!
//! - ops/alerts.yml: promtool unit tests fire every alert and pin its rendered text.
//!
//! Self-contained: helpers live at the bottom.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::repo_root;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------
// ops/alerts.yml

/// `promtool test rules ops/alerts.test.yml` passes, every alert of ops/alerts.yml fires in it with
/// its annotations spelled out, and the OutboxRelayStuck text depends on its operand order (the
/// shipped order rendered "has not committed for 1s").
#[test]
fn promtool_unit_tests_fire_every_alert_with_its_rendered_text() -> Result<()> {
    let ops = repo_root().join("ops");
    let rules_text = std::fs::read_to_string(ops.join("alerts.yml"))?;
    let tests_text = std::fs::read_to_string(ops.join("alerts.test.yml"))?;
    let rules = yaml(&rules_text, "ops/alerts.yml")?;
    let tests = yaml(&tests_text, "ops/alerts.test.yml")?;

    let mut annotations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for group in rules["groups"].as_vec().context("groups")? {
        for rule in group["rules"].as_vec().context("rules")? {
            let name = rule["alert"].as_str().context("rule without alert")?;
            let keys = rule["annotations"]
                .as_hash()
                .context("rule without annotations")?
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            annotations.insert(name.to_string(), keys);
        }
    }
    ensure!(annotations.len() >= 8, "alerts: {annotations:?}");
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for test in tests["tests"].as_vec().context("tests")? {
        for case in test["alert_rule_test"]
            .as_vec()
            .context("alert_rule_test")?
        {
            let name = case["alertname"].as_str().context("alertname")?;
            for alert in case["exp_alerts"].as_vec().context("exp_alerts")? {
                let exp = alert["exp_annotations"].as_hash().with_context(|| {
                    format!("{name}: an expected alert without exp_annotations")
                })?;
                let keys: BTreeSet<String> = exp
                    .iter()
                    .filter(|(_, v)| v.as_str().is_some_and(|v| !v.is_empty()))
                    .filter_map(|(k, _)| k.as_str().map(str::to_string))
                    .collect();
                ensure!(
                    annotations.get(name) == Some(&keys),
                    "{name}: the test pins annotations {keys:?}, the rule has {:?}",
                    annotations.get(name)
                );
                *fired.entry(name.to_string()).or_default() += 1;
            }
        }
    }
    for alert in annotations.keys() {
        ensure!(
            fired.contains_key(alert),
            "ops/alerts.test.yml never fires {alert}"
        );
    }

    let (ok, out) = promtool_test(&ops)?;
    ensure!(ok, "promtool test rules ops/alerts.test.yml:\n{out}");
    println!("{out}");

    // The same tests against OutboxRelayStuck with its first two `and` operands swapped back.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("alerts.test.yml"), &tests_text)?;
    let mut swapped = false;
    let mut in_stuck = false;
    let mut lines = Vec::new();
    for line in rules_text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            in_stuck = name.trim() == "OutboxRelayStuck";
        }
        match line.split_once("expr: ") {
            Some((indent, expr)) if in_stuck => {
                let mut operands: Vec<&str> = expr.split(" and ").collect();
                ensure!(operands.len() >= 2, "OutboxRelayStuck: {expr}");
                operands.swap(0, 1);
                lines.push(format!("{indent}expr: {}", operands.join(" and ")));
                swapped = true;
            }
            _ => lines.push(line.to_string()),
        }
    }
    ensure!(swapped, "no OutboxRelayStuck expr in ops/alerts.yml");
    std::fs::write(dir.path().join("alerts.yml"), lines.join("\n"))?;
    let (ok, out) = promtool_test(dir.path())?;
    ensure!(
        !ok && out.contains("has not committed for 1s"),
        "with the operands swapped the text must read \"1s\" and the test fail:\n{out}"
    );
    Ok(())
}

fn promtool_test(dir: &Path) -> Result<(bool, String)> {
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir)
        .output()
        .context("promtool (apt-get install prometheus; dev/setup does)")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn yaml(text: &str, what: &str) -> Result<Yaml> {
    let mut docs =
        YamlLoader::load_from_str(text).with_context(|| format!("{what} does not parse"))?;
    ensure!(docs.len() == 1, "{what}: expected one document");
    Ok(docs.remove(0))
}
