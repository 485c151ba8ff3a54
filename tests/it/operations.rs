//! Operating the relay as the README, the units and the compose file say (issue 14): each test fails
//! on the defect it was written for.
//!
//! - ops/alerts.yml: promtool unit tests fire every alert and pin its rendered text.
//! - systemd: the template unit `outbox-relay@.service` (one config per instance, the plain unit's
//!   sandbox); no `ExecStartPre=` whose refusal systemd would restart; `Documentation=` that exists.
//!
//! A systemd manager cannot run here (no systemd as PID 1, and a private one would take over the
//! machine's cgroups), so the unit checks are static plus `systemd-analyze` and the relay's own exit
//! codes. Self-contained: helpers live at the bottom.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::repo_root;
use yaml_rust2::{Yaml, YamlLoader};

fn bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_outbox-relay")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_outbox-relay").map(PathBuf::from))
        .unwrap_or_else(|| find_relay_bin().expect("relay binary"))
}

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
// systemd units

/// Directives of the template that name the instance; every other one must be the plain unit's.
const PER_INSTANCE: [&str; 5] = [
    "Description",
    "ExecStart",
    "LoadCredential",
    "EnvironmentFile",
    "SyslogIdentifier",
];

/// `outbox-relay@NAME` runs `/etc/outbox-relay/NAME.toml` with exactly the plain unit's settings
/// otherwise, verifies, and its sandbox rates 2.0 or lower.
#[test]
fn systemd_template_runs_one_config_per_instance_with_the_plain_units_sandbox() -> Result<()> {
    let root = repo_root();
    let plain = std::fs::read_to_string(root.join("systemd/outbox-relay.service"))?;
    let template = std::fs::read_to_string(root.join("systemd/outbox-relay@.service"))?;
    let p = unit_directives(&plain);
    let t = unit_directives(&template);
    ensure!(
        values(&t, "ExecStart")
            == ["/usr/local/bin/outbox-relay run --config /etc/outbox-relay/%i.toml"],
        "ExecStart of the template: {:?}",
        values(&t, "ExecStart")
    );
    let shared = |d: &[(String, String, String)]| -> Vec<(String, String, String)> {
        d.iter()
            .filter(|(_, k, _)| !PER_INSTANCE.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    let (sp, st) = (shared(&p), shared(&t));
    for (a, b) in sp.iter().zip(&st) {
        ensure!(
            a == b,
            "outbox-relay.service has {a:?} where outbox-relay@.service has {b:?}"
        );
    }
    ensure!(
        sp.len() == st.len(),
        "the units differ in length: {} and {} shared directives",
        sp.len(),
        st.len()
    );
    for key in PER_INSTANCE {
        let (vp, vt) = (values(&p, key), values(&t, key));
        ensure!(vp.len() == vt.len(), "{key}: {vp:?} vs {vt:?}");
        for v in vt {
            ensure!(v.contains("%i"), "{key}={v} does not name the instance");
        }
    }

    // systemd-analyze on an instance, with the built binary and the example config.
    let dir = tempfile::tempdir()?;
    let copy = template
        .replace("/usr/local/bin/outbox-relay", &bin().to_string_lossy())
        .replace(
            "/etc/outbox-relay/%i.toml",
            &dir.path().join("%i.toml").to_string_lossy(),
        );
    std::fs::write(dir.path().join("outbox-relay@.service"), copy)?;
    std::fs::copy(
        root.join("systemd/outbox-relay.toml"),
        dir.path().join("orders.toml"),
    )?;
    let instance = dir.path().join("outbox-relay@orders.service");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .context("systemd-analyze (install the systemd package: dev/setup does)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("outbox-relay@"),
        "systemd-analyze verify outbox-relay@orders.service: {stderr}"
    );
    let exposure = exposure(&instance)?;
    println!("systemd-analyze security outbox-relay@orders.service: {exposure}");
    ensure!(exposure <= 2.0, "exposure {exposure} > 2.0");
    Ok(())
}

/// A config the relay refuses never gets restarted: neither unit runs anything before the main
/// process (systemd's `RestartPreventExitStatus=` judges the main process only, so a refusal in
/// `ExecStartPre=` was retried), and the unit's own `ExecStart` line exits 78 on a bad or missing
/// config, a status the unit does not restart.
#[test]
fn systemd_units_leave_config_errors_to_run_whose_exit_78_is_not_restarted() -> Result<()> {
    let root = repo_root();
    for (unit, instance) in [
        ("outbox-relay.service", "outbox-relay"),
        ("outbox-relay@.service", "orders"),
    ] {
        let d = unit_directives(&std::fs::read_to_string(root.join("systemd").join(unit))?);
        for key in ["ExecCondition", "ExecStartPre", "ExecStartPost"] {
            ensure!(
                values(&d, key).is_empty(),
                "{unit}: {key}= runs beside the main process: a refusal there is restarted"
            );
        }
        ensure!(values(&d, "Restart") == ["on-failure"], "{unit}: Restart=");
        let prevent: BTreeSet<String> = values(&d, "RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        ensure!(
            prevent.contains("78"),
            "{unit}: RestartPreventExitStatus={prevent:?}"
        );

        let exec = values(&d, "ExecStart");
        let exec = exec.first().context("ExecStart")?.replace("%i", instance);
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let at = argv
            .iter()
            .position(|a| *a == "--config")
            .context("--config")?;
        let dir = tempfile::tempdir()?;
        let bad = dir.path().join(format!("{instance}.toml"));
        std::fs::write(&bad, "[postgres]\nslto = \"x\"\n")?;
        let missing = dir.path().join("missing.toml");
        for (config, expect) in [(&bad, "slto"), (&missing, "missing.toml")] {
            let mut args: Vec<String> = argv[1..].iter().map(|s| s.to_string()).collect();
            args[at] = config.to_string_lossy().into_owned();
            let out = Command::new(bin())
                .args(&args)
                .output()
                .with_context(|| format!("{unit}: {exec}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(78) && stderr.contains(expect),
                "{unit}: `{exec}` on {}: {:?} {stderr}",
                config.display(),
                out.status
            );
        }
    }
    Ok(())
}

/// `Documentation=` names a file the README's install steps put there, and every repository path a
/// unit's comments mention exists.
#[test]
fn systemd_units_point_at_documentation_that_exists() -> Result<()> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let install = code_blocks(section(&readme, "Running under systemd")?, "sh").join("\n");
    for unit in ["outbox-relay.service", "outbox-relay@.service"] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit))?;
        let docs = values(&unit_directives(&text), "Documentation");
        ensure!(!docs.is_empty(), "{unit}: no Documentation=");
        for uri in docs.iter().flat_map(|v| v.split_whitespace()) {
            let path = uri
                .strip_prefix("file://")
                .with_context(|| format!("{unit}: Documentation={uri}: only file:// is checked"))?;
            ensure!(
                install.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.first() == Some(&"install")
                        && words.contains(&"README.md")
                        && words.contains(&path)
                }),
                "{unit}: Documentation={uri}, but the README's install steps do not put README.md there"
            );
        }
        for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
            for word in line.split_whitespace() {
                let word = word.trim_matches(|c: char| "()[],:;\"'`".contains(c));
                let repo_path = ["docs/", "systemd/", "sql/", "src/", "ops/", "dev/"]
                    .iter()
                    .any(|p| word.starts_with(p))
                    || word == "README.md";
                if repo_path {
                    ensure!(
                        root.join(word).exists(),
                        "{unit} mentions {word}, which does not exist"
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn yaml(text: &str, what: &str) -> Result<Yaml> {
    let mut docs =
        YamlLoader::load_from_str(text).with_context(|| format!("{what} does not parse"))?;
    ensure!(docs.len() == 1, "{what}: expected one document");
    Ok(docs.remove(0))
}

/// `(section, key, value)` of every directive of a unit file, in order.
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values(directives: &[(String, String, String)], key: &str) -> Vec<String> {
    directives
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// `systemd-analyze security --offline` figure for a unit file.
fn exposure(unit: &Path) -> Result<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| {
            format!(
                "no exposure in {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("exposure figure")?
        .parse()?)
}

/// The README text under `## {heading}`, up to the next `## ` heading.
fn section<'a>(readme: &'a str, heading: &str) -> Result<&'a str> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .with_context(|| format!("README has no \"## {heading}\""))?;
    let rest = &readme[start + heading.len() + 5..];
    Ok(rest.find("\n## ").map_or(rest, |end| &rest[..end]))
}

/// The bodies of the fenced code blocks of `lang` in `text` (indented fences included).
fn code_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let t = line.trim();
        match &mut current {
            None if t == format!("```{lang}") => current = Some(Vec::new()),
            Some(_) if t == "```" => blocks.push(current.take().unwrap_or_default().join("\n")),
            Some(lines) => lines.push(t),
            None => {}
        }
    }
    blocks
}
