//! The README's configuration reference documents every key the relay accepts, and nothing else.
//!
//! Keys come from the config structs themselves (each struct's doc starts with its section, e.g.
//! `/// \`[postgres]\``, and every `pub field` is a key); the README block lists each as `key =`,
//! commented out or not. A key added to the code without documentation fails here.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::repo_root;

/// `section.key` for every field of every config section struct.
fn keys_in_code() -> Result<BTreeSet<String>> {
    let src = std::fs::read_to_string(repo_root().join("src/config/mod.rs"))?;
    let mut keys = BTreeSet::new();
    let mut section: Option<String> = None;
    let mut in_struct = false;
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(rest) = line.strip_prefix("/// `[") {
            section = rest.split(']').next().map(str::to_string);
            continue;
        }
        if line.starts_with("pub struct ") && section.is_some() {
            in_struct = true;
            continue;
        }
        if in_struct && line.starts_with('}') {
            in_struct = false;
            section = None;
            continue;
        }
        if in_struct && line.starts_with("    pub ") {
            let name = t
                .trim_start_matches("pub ")
                .split(':')
                .next()
                .context("field")?
                .trim();
            let ty = t.split(':').nth(1).unwrap_or("").trim();
            // Nested tables are sections of their own.
            if ty.ends_with("Config,")
                || ty.starts_with("BTreeMap")
                || ty.starts_with("KafkaProperties")
            {
                continue;
            }
            keys.insert(format!("{}.{name}", section.as_deref().context("section")?));
        }
    }
    Ok(keys)
}

/// `section.key` for every `key =` (or `# key =`) line of the README's configuration block.
fn keys_in_readme() -> Result<BTreeSet<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let block = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .context("no ```toml block under ## Configuration")?;
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in block.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            section = rest.split(']').next().unwrap_or("").to_string();
            continue;
        }
        let t = t.trim_start_matches('#').trim();
        if let Some((key, _)) = t.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.is_empty() {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    Ok(keys)
}

#[test]
fn every_config_key_is_documented_in_the_readme() -> Result<()> {
    let code = keys_in_code()?;
    let readme = keys_in_readme()?;
    ensure!(
        code.len() > 40,
        "found only {} keys in the code: {code:?}",
        code.len()
    );
    let undocumented: Vec<_> = code.difference(&readme).collect();
    ensure!(
        undocumented.is_empty(),
        "config keys missing from the README's reference: {undocumented:?}"
    );
    // Map entries under [kafka.properties] / [routing.topics] are examples, not keys.
    let unknown: Vec<_> = readme
        .difference(&code)
        .filter(|k| !k.starts_with("routing.topics.") && !k.starts_with("kafka.properties."))
        .collect();
    ensure!(
        unknown.is_empty(),
        "README documents keys the relay does not have: {unknown:?}"
    );
    Ok(())
}

#[test]
fn the_readme_reference_is_a_valid_config() -> Result<()> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let block = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .context("config block")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, block)?;
    outbox_relay::config::Config::load_with_env(&path, &Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
