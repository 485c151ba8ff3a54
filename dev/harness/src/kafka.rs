//! A real single-node Apache Kafka 4.x broker (KRaft, broker+controller in one JVM) for tests, one per
//! test process, plus what tests do with it: create topics (auto-create is off, as in production),
//! follow topics while relays run ([`Kafka::watch`]), and, once they stopped, read every partition to
//! its end for the verdict ([`Kafka::collect`], read_committed; or read_uncommitted).
//!
//! Why a real broker: librdkafka's mock cluster does not fence zombie transactional producers, and the
//! exactly-once promises are about transactions. The classpath comes from Maven Central through
//! `dev/kafka/pom.xml`, cached in `<repo>/.cache/kafka-<version>/lib` once per clone.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::RngCore;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::process::{self, ManagedChild};
use crate::proxy::Proxy;
use crate::util::{self, free_port, random_suffix, repo_root, wait_until_blocking};

/// Must match `kafka.version` in dev/kafka/pom.xml (passed to mvn with -Dkafka.version).
pub const KAFKA_VERSION: &str = "4.1.1";
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// A Kafka broker owned by this process.
///
/// Listeners: `PLAINTEXT` ([`Kafka::bootstrap`], what every test uses; also inter-broker), `CONTROLLER`,
/// `SASL_SSL` ([`Kafka::sasl_ssl_bootstrap`]: SCRAM-SHA-512 with user [`Kafka::SASL_USER`], TLS with the
/// harness certificate, CA at [`Kafka::ca_path`]) and `PROXIED` (PLAINTEXT, advertised at the port of
/// [`Kafka::proxy`], so every connection of a client bootstrapped there goes through the proxy).
/// The `StandardAuthorizer` runs with `allow.everyone.if.no.acl.found=true` and the PLAINTEXT principal
/// (`User:ANONYMOUS`) as super user: nothing is denied until a test adds an ACL ([`Kafka::add_topic_acl`]).
#[derive(Debug)]
pub struct Kafka {
    dir: PathBuf,
    lib_dir: PathBuf,
    port: u16,
    controller_port: u16,
    sasl_port: u16,
    proxied_port: u16,
    proxy: Proxy,
    ca_path: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<ManagedChild>>,
    ops: tokio::sync::Mutex<()>,
}

static SHARED: OnceLock<Kafka> = OnceLock::new();
static SHARED_INIT: Mutex<()> = Mutex::new(());

impl Kafka {
    /// The SCRAM-SHA-512 user of the `SASL_SSL` listener (created when the storage is formatted).
    pub const SASL_USER: &'static str = "relay";
    /// [`Kafka::SASL_USER`]'s password.
    pub const SASL_PASSWORD: &'static str = "relay-scram-harness-pw";
    /// The SASL mechanism the `SASL_SSL` listener accepts.
    pub const SASL_MECHANISM: &'static str = "SCRAM-SHA-512";

    /// The broker shared by every test of this process, started on first use (blocking; callable from
    /// any thread or runtime). Panics if it cannot start.
    pub fn shared() -> &'static Kafka {
        if let Some(k) = SHARED.get() {
            return k;
        }
        let _guard = SHARED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = SHARED.get() {
            return k;
        }
        let t = Instant::now();
        let k = Kafka::start_new().expect("start the harness Kafka broker");
        eprintln!(
            "[harness] Kafka ready on {} in {:.1?} (dir {})",
            k.bootstrap(),
            t.elapsed(),
            k.dir.display()
        );
        SHARED.get_or_init(|| k)
    }

    /// Starts a new broker (blocking). Most callers want [`Kafka::shared`].
    pub fn start_new() -> Result<Kafka> {
        let lib_dir = ensure_classpath()?;
        let dir = process::new_process_dir("kafka")?;
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 4 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let (port, controller_port, sasl_port, proxied_port) =
            (ports[0], ports[1], ports[2], ports[3]);
        // The proxy holds its port from now on; the broker advertises it for the PROXIED listener.
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], proxied_port)))?;
        let proxy_port = proxy.port();
        let pki = crate::tls::Pki::shared();
        let keystore = pki.server.pkcs12.display();
        let keystore_pw = crate::tls::KEYSTORE_PASSWORD;
        let log_path = dir.join("kafka.log");
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://127.0.0.1:{sasl_port},PROXIED://127.0.0.1:{proxied_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port},PROXIED://127.0.0.1:{proxy_port}\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,PROXIED:PLAINTEXT\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_ssl.ssl.keystore.type=PKCS12\n\
             listener.name.sasl_ssl.ssl.keystore.location={keystore}\n\
             listener.name.sasl_ssl.ssl.keystore.password={keystore_pw}\n\
             listener.name.sasl_ssl.ssl.key.password={keystore_pw}\n\
             listener.name.sasl_ssl.ssl.client.auth=none\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             allow.everyone.if.no.acl.found=true\n\
             super.users=User:ANONYMOUS\n\
             log.dirs={logs}\n\
             num.partitions=3\n\
             auto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=5\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=5\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             log.flush.interval.messages=9223372036854775807\n",
            logs = dir.join("data").display()
        );
        std::fs::write(dir.join("server.properties"), props)?;
        std::fs::write(
            dir.join("log4j2.properties"),
            format!(
                "status = warn\n\
                 appender.file.type = File\n\
                 appender.file.name = FILE\n\
                 appender.file.fileName = {log}\n\
                 appender.file.append = true\n\
                 appender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = INFO\n\
                 rootLogger.appenderRef.file.ref = FILE\n\
                 logger.kafka.name = kafka\n\
                 logger.kafka.level = INFO\n\
                 logger.apache.name = org.apache.kafka\n\
                 logger.apache.level = INFO\n",
                log = log_path.display()
            ),
        )?;

        // Format the storage once: random cluster id, static quorum (controller.quorum.voters), so no
        // --standalone (that is for the dynamic quorum form, controller.quorum.bootstrap.servers).
        let cluster_id = random_cluster_id();
        let out = Command::new("java")
            .args(java_common_args(&dir, &lib_dir))
            .arg("kafka.tools.StorageTool")
            // `--cluster-id=<id>` in one argument: an id may start with '-' (1 in 64), which the
            // tool's argument parser would take for an option.
            .arg("format")
            .arg(format!("--cluster-id={cluster_id}"))
            .arg("-c")
            .arg(dir.join("server.properties"))
            .arg("--ignore-formatted")
            .arg("--add-scram")
            .arg(format!(
                "{}=[name={},password={}]",
                Self::SASL_MECHANISM,
                Self::SASL_USER,
                Self::SASL_PASSWORD
            ))
            .current_dir(&dir)
            .output()
            .context("run kafka.tools.StorageTool")?;
        if !out.status.success() {
            bail!(
                "StorageTool format failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let k = Kafka {
            dir,
            lib_dir,
            port,
            controller_port,
            sasl_port,
            proxied_port,
            proxy,
            ca_path: pki.ca_path().to_path_buf(),
            log_path,
            child: Mutex::new(None),
            ops: tokio::sync::Mutex::const_new(()),
        };
        util::block_on(k.start())??;
        Ok(k)
    }

    /// `127.0.0.1:<port>` of the PLAINTEXT listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` of the SASL_SSL listener (SCRAM-SHA-512, TLS certificate for `localhost` and
    /// `127.0.0.1` signed by [`Kafka::ca_path`]).
    pub fn sasl_ssl_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_port)
    }

    /// The CA certificate (PEM) that signed the SASL_SSL listener's certificate (`ssl.ca.location`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The proxy in front of the `PROXIED` listener: bootstrap a client at [`Kafka::proxied_bootstrap`]
    /// and metadata sends it back to the proxy too, so [`Proxy::cut_all`] / [`Proxy::set_blackhole`]
    /// hit all its broker connections. Shared by the process: a test that cuts it should be the only
    /// one using it at the time.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// `127.0.0.1:<proxy port>`: the bootstrap address through [`Kafka::proxy`].
    pub fn proxied_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port())
    }

    /// The broker port behind the proxy (the `PROXIED` listener itself).
    pub fn proxied_listener_port(&self) -> u16 {
        self.proxied_port
    }

    /// A client config for the SASL_SSL listener as [`Kafka::SASL_USER`] (add what the client needs).
    pub fn sasl_ssl_client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.sasl_ssl_bootstrap())
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", Self::SASL_MECHANISM)
            .set("sasl.username", Self::SASL_USER)
            .set("sasl.password", Self::SASL_PASSWORD)
            .set("ssl.ca.location", self.ca_path.display().to_string());
        c
    }

    /// Adds a literal topic ACL through the PLAINTEXT listener (whose principal is a super user), e.g.
    /// `add_topic_acl("User:relay", "WRITE", "DENY", "t_x.booking")`. rust-rdkafka has no
    /// CreateAcls, so this runs a small Java AdminClient program on the broker's classpath.
    pub async fn add_topic_acl(
        &self,
        principal: &str,
        operation: &str,
        permission: &str,
        topic: &str,
    ) -> Result<()> {
        self.acl_command(&["add", principal, operation, permission, topic])
            .await
    }

    /// Removes the ACLs [`Kafka::add_topic_acl`] added with the same arguments.
    pub async fn remove_topic_acl(
        &self,
        principal: &str,
        operation: &str,
        permission: &str,
        topic: &str,
    ) -> Result<()> {
        self.acl_command(&["remove", principal, operation, permission, topic])
            .await
    }

    async fn acl_command(&self, args: &[&str]) -> Result<()> {
        let source = self.dir.join("HarnessAcl.java");
        if !source.exists() {
            std::fs::write(&source, ACL_JAVA)?;
        }
        let mut cmd = tokio::process::Command::new("java");
        cmd.arg("-cp")
            .arg(format!("{}/*", self.lib_dir.display()))
            .arg(&source)
            .arg(self.bootstrap())
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .context("ACL command timed out")?
            .context("run java HarnessAcl.java")?;
        if !out.status.success() {
            bail!(
                "ACL command {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<i32> {
        self.child
            .lock()
            .expect("kafka child")
            .as_ref()
            .map(|c| c.pid())
    }

    /// A client config pointing at this broker (add what the client needs).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Starts the JVM on the existing dirs and ports and waits until metadata answers and a
    /// transactional producer can commit (the transaction coordinator loads lazily: tests must not pay that).
    pub async fn start(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if self.pid().is_some() && matches!(self.child_try_wait(), Ok(None)) {
            return Ok(());
        }
        *self.child.lock().expect("kafka child") = Some(self.spawn_jvm()?);
        let bootstrap = self.bootstrap();
        let log_path = self.log_path.clone();
        let ready = tokio::task::spawn_blocking(move || wait_ready(&bootstrap, READY_DEADLINE))
            .await
            .context("readiness task panicked")?;
        if let Err(e) = ready {
            // Dropping the child kills its group.
            drop(self.take_child());
            return Err(e.context(format!(
                "Kafka did not become ready; log tail:\n{}",
                crate::postgres::tail(&log_path, 30)
            )));
        }
        Ok(())
    }

    fn spawn_jvm(&self) -> Result<ManagedChild> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.stdout"))?;
        let mut cmd = Command::new("java");
        cmd.args(["-Xmx512m", "-Xms128m"])
            .args(java_common_args(&self.dir, &self.lib_dir))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        process::spawn_managed(cmd)
    }

    fn child_try_wait(&self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.lock().expect("kafka child").as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    fn take_child(&self) -> Option<ManagedChild> {
        self.child.lock().expect("kafka child").take()
    }

    /// SIGKILL the JVM and wait until it is gone.
    pub async fn kill9(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if let Some(mut c) = self.take_child() {
            c.kill9().await?;
        }
        Ok(())
    }

    /// SIGTERM (controlled shutdown) and wait; SIGKILL after 60 s.
    pub async fn stop_graceful(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if let Some(mut c) = self.take_child() {
            let _ = c.signal_group(libc::SIGCONT);
            let _ = c.signal_group(libc::SIGTERM);
            if let Err(e) = c.wait_group_gone(Duration::from_secs(60)).await {
                let _ = c.kill9().await;
                return Err(e.context("Kafka did not stop in time; killed it"));
            }
        }
        Ok(())
    }

    pub async fn restart(&self) -> Result<()> {
        self.stop_graceful().await?;
        self.start().await
    }

    /// SIGSTOP: the broker freezes (connections stay open, nothing answers).
    pub fn pause(&self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("Kafka is not running"))?;
        process::send_signal(-pid, libc::SIGSTOP)
    }

    /// SIGCONT after [`Kafka::pause`].
    pub fn resume(&self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("Kafka is not running"))?;
        process::send_signal(-pid, libc::SIGCONT)
    }

    /// Creates a topic (replication factor 1) and waits until metadata shows every partition with a leader.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("create AdminClient")?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&topic], &opts).await?;
        for r in results {
            if let Err((t, code)) = r {
                bail!("create topic {t}: {code}");
            }
        }
        let bootstrap = self.bootstrap();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()?;
            wait_until_blocking(
                Duration::from_secs(30),
                &format!("topic {name} in metadata"),
                || {
                    let md = consumer.fetch_metadata(Some(&name), Duration::from_secs(5))?;
                    let ok = md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    });
                    Ok(ok.then_some(()))
                },
            )
        })
        .await??;
        Ok(())
    }

    /// Everything committed in `topics`, for a verdict: call it once the relays stopped. Waits (up
    /// to [`SETTLE`]) until no transaction is open in any partition (the last stable offset equals
    /// the high watermark: the markers of a commit that just returned are written), then reads
    /// every partition from the beginning to that end with `read_committed`. Nothing that reached
    /// the broker before the call can hide behind a quiet period, as a late duplicate could when
    /// reading stopped at the expected count. Records are in partition order, topic by topic.
    pub async fn collect(&self, topics: &[String]) -> Result<Vec<Record>> {
        self.read_to_end(topics, true).await
    }

    /// [`Kafka::collect`] with `read_uncommitted`: also the records of open and aborted
    /// transactions (read to the high watermark).
    pub async fn collect_uncommitted(&self, topics: &[String]) -> Result<Vec<Record>> {
        self.read_to_end(topics, false).await
    }

    async fn read_to_end(&self, topics: &[String], read_committed: bool) -> Result<Vec<Record>> {
        let bootstrap = self.bootstrap();
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for t in &topics {
                out.extend(read_topic_to_end(&bootstrap, t, read_committed)?);
            }
            Ok(out)
        })
        .await
        .context("consumer task panicked")?
    }

    /// Follows `topics` from the beginning in a background thread (`read_committed`), to wait for
    /// progress while relays run. Not a verdict: what it saw may still grow; see [`Kafka::collect`].
    pub async fn watch(&self, topics: &[String]) -> Result<Watch> {
        let bootstrap = self.bootstrap();
        let topics = topics.to_vec();
        let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer> {
            let consumer = consumer(&bootstrap, true, false)?;
            let mut tpl = TopicPartitionList::new();
            for t in &topics {
                for p in partitions(&consumer, t)? {
                    tpl.add_partition_offset(t, p, Offset::Beginning)?;
                }
            }
            consumer.assign(&tpl)?;
            Ok(consumer)
        })
        .await
        .context("consumer task panicked")??;
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        let r = Record::from_message(&m);
                        records.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                }
            })
        };
        Ok(Watch {
            records,
            stop,
            thread: Some(thread),
        })
    }
}

/// How long [`Kafka::collect`] waits for open transactions to end before it reads to the last
/// stable offset anyway (a producer killed inside a transaction holds it open until the
/// transaction timeout; what it wrote is not committed, so no reader may count it).
pub const SETTLE: Duration = Duration::from_secs(30);
/// How long reading one topic to its end may take.
const READ_DEADLINE: Duration = Duration::from_secs(600);

/// A background reader of some topics ([`Kafka::watch`]); stops when dropped.
#[derive(Debug)]
pub struct Watch {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Records seen so far (duplicates included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the records seen so far, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        self.lock().clone()
    }

    /// Waits until `done` holds for the records seen so far; fails after `deadline`, naming `what`.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[Record]) -> bool,
    ) -> Result<()> {
        crate::util::wait_until(deadline, what, || {
            let ok = done(&self.lock());
            async move { Ok(ok.then_some(())) }
        })
        .await
    }

    /// Waits until at least `n` records were seen.
    pub async fn wait_for_count(&self, n: usize, deadline: Duration) -> Result<()> {
        self.wait_for(deadline, &format!("{n} records committed"), |r| {
            r.len() >= n
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A record as a consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The first header named `name`, as UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// A Java AdminClient program (run by the single-file source launcher): `<bootstrap> add|remove
/// <principal> <operation> <ALLOW|DENY> <topic>`.
const ACL_JAVA: &str = r#"
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class HarnessAcl {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", a[0]);
        AclBinding b = new AclBinding(
            new ResourcePattern(ResourceType.TOPIC, a[5], PatternType.LITERAL),
            new AccessControlEntry(a[2], "*", AclOperation.fromString(a[3]),
                AclPermissionType.fromString(a[4])));
        try (Admin admin = Admin.create(p)) {
            if (a[1].equals("add")) {
                admin.createAcls(List.of(b)).all().get();
            } else {
                admin.deleteAcls(List.of(b.toFilter())).all().get();
            }
        }
    }
}
"#;

/// A consumer of no group (partitions are assigned), from the beginning, with `isolation`.
fn consumer(bootstrap: &str, read_committed: bool, eof: bool) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("harness-collect-{}", random_suffix()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .context("create consumer")
}

/// How long the harness keeps asking a broker that answers with a connection error.
const ASK_FOR: Duration = Duration::from_secs(60);
/// One attempt's bound, so that a request lost with a dropped connection is sent again soon.
const ASK_EACH: Duration = Duration::from_secs(5);

/// Calls `ask` with a timeout of at most [`ASK_EACH`] until it succeeds or [`ASK_FOR`] passed.
/// A new client may lose a request sent as it drops its bootstrap connection
/// (BrokerTransportFailure), and a loaded 2-core machine has seen one such request hang for its
/// whole 10 s timeout (CI at c2c941d): the harness must not call that a lost event.
fn ask_again<T>(what: &str, mut ask: impl FnMut(Duration) -> KafkaResult<T>) -> Result<T> {
    let deadline = Instant::now() + ASK_FOR;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ask(left.min(ASK_EACH).max(Duration::from_millis(100))) {
            Ok(v) => return Ok(v),
            Err(e) if left > Duration::from_millis(100) => {
                eprintln!("[harness] {what}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| what.to_string()),
        }
    }
}

/// The partition ids of `topic`.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let md = ask_again(&format!("metadata of {topic}"), |t| {
        consumer.fetch_metadata(Some(topic), t)
    })?;
    let t = md
        .topics()
        .iter()
        .find(|m| m.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic} not in metadata"))?;
    if let Some(e) = t.error() {
        bail!("topic {topic}: {e:?}");
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// (low, end) of each partition as `consumer`'s isolation sees it: the end is the high
/// watermark for `read_uncommitted` and the last stable offset for `read_committed` (librdkafka
/// sends its isolation level with ListOffsets).
fn ends(consumer: &BaseConsumer, topic: &str, parts: &[i32]) -> Result<Vec<(i64, i64)>> {
    parts
        .iter()
        .map(|p| {
            ask_again(&format!("watermarks of {topic}[{p}]"), |t| {
                consumer.fetch_watermarks(topic, *p, t)
            })
        })
        .collect()
}

/// Reads every partition of `topic` from the beginning to the end it has now (see [`Kafka::collect`]).
fn read_topic_to_end(bootstrap: &str, topic: &str, read_committed: bool) -> Result<Vec<Record>> {
    let consumer = consumer(bootstrap, read_committed, true)?;
    let parts = partitions(&consumer, topic)?;
    if read_committed {
        // Open transactions first: the end to read to is where the last one was decided.
        let uncommitted = self::consumer(bootstrap, false, false)?;
        let settled =
            wait_until_blocking(SETTLE, &format!("no open transaction in {topic}"), || {
                let stable = ends(&consumer, topic, &parts)?;
                let high = ends(&uncommitted, topic, &parts)?;
                Ok((stable.iter().zip(&high).all(|(s, h)| s.1 == h.1)).then_some(()))
            });
        if let Err(e) = settled {
            eprintln!("[harness] {e:#}: reading {topic} to its last stable offset");
        }
    }
    let ends = ends(&consumer, topic, &parts)?;
    let mut tpl = TopicPartitionList::new();
    // Partition id -> the offset to read to; a partition leaves when it reached it.
    let mut open: HashMap<i32, i64> = HashMap::new();
    for (p, (low, end)) in parts.iter().zip(&ends) {
        if end > low {
            open.insert(*p, *end);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut out = Vec::new();
    while !open.is_empty() {
        if start.elapsed() > READ_DEADLINE {
            bail!("reading {topic} to its end took over {READ_DEADLINE:?}; still open (partition: end): {open:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let (p, offset) = (m.partition(), m.offset());
                let Some(&end) = open.get(&p) else { continue };
                if offset < end {
                    out.push(Record::from_message(&m));
                }
                // With read_committed the last offset below the end is usually a commit marker,
                // which is never delivered: the end-of-partition event covers that case.
                if offset >= end - 1 {
                    open.remove(&p);
                }
            }
            // Reached the end the broker had at that fetch: at least the end taken above.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => {
                // Transient errors are retried by librdkafka.
                tracing::debug!("consumer error: {e}");
            }
            None => {}
        }
    }
    Ok(out)
}

fn java_common_args(dir: &Path, lib_dir: &Path) -> Vec<String> {
    vec![
        format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ),
        format!("-Dkafka.logs.dir={}", dir.display()),
        "-Djava.awt.headless=true".into(),
        "-cp".into(),
        format!("{}/*", lib_dir.display()),
    ]
}

/// Metadata answers, then a probe transactional producer commits an empty transaction.
fn wait_ready(bootstrap: &str, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    wait_until_blocking(deadline, "Kafka metadata", || {
        let md = consumer.fetch_metadata(None, Duration::from_secs(2))?;
        Ok((!md.brokers().is_empty()).then_some(()))
    })?;
    let metadata_at = start.elapsed();
    let remaining = deadline.saturating_sub(metadata_at);
    wait_until_blocking(remaining, "Kafka transaction coordinator", || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set(
                "transactional.id",
                format!("harness-probe-{}", random_suffix()),
            )
            .set("transaction.timeout.ms", "60000")
            .create()?;
        producer.init_transactions(Duration::from_secs(20))?;
        producer.begin_transaction()?;
        producer.commit_transaction(Duration::from_secs(20))?;
        Ok(Some(()))
    })?;
    eprintln!(
        "[harness] Kafka {bootstrap}: metadata after {metadata_at:.1?}, transactions after {:.1?}",
        start.elapsed()
    );
    Ok(())
}

/// 16 random bytes, base64url without padding (22 chars): the form Kafka's cluster ids take.
fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// `<repo>/.cache/kafka-<version>/lib`, filled by mvn once per clone under a file lock (several test
/// binaries may start at once); a `.complete` marker says it is whole.
pub fn ensure_classpath() -> Result<PathBuf> {
    let version =
        std::env::var("OUTBOX_RELAY_KAFKA_VERSION").unwrap_or_else(|_| KAFKA_VERSION.into());
    let cache = repo_root().join(".cache").join(format!("kafka-{version}"));
    let lib = cache.join("lib");
    let marker = cache.join(".complete");
    if marker.exists() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&cache)?;
    // Not `with_extension`: the version's dots would be taken for one.
    let lock = File::create(cache.with_file_name(format!("kafka-{version}.lock")))?;
    // SAFETY: flock on an fd we own; blocks until the other holder finishes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("flock the Kafka cache lock");
    }
    if marker.exists() {
        return Ok(lib);
    }
    let _ = std::fs::remove_dir_all(&lib);
    let t = Instant::now();
    eprintln!(
        "[harness] fetching the Kafka {version} classpath with Maven into {}",
        lib.display()
    );
    let out = Command::new("mvn")
        .arg("-q")
        .arg("-B")
        .arg("-f")
        .arg(repo_root().join("dev/kafka/pom.xml"))
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", lib.display()))
        .arg("-DincludeScope=runtime")
        .arg(format!("-Dkafka.version={version}"))
        .output()
        .context("run mvn (is Maven installed?)")?;
    if !out.status.success() {
        bail!(
            "mvn dependency:copy-dependencies failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !lib.join(format!("kafka_2.13-{version}.jar")).exists() {
        bail!(
            "mvn ran but {} has no kafka_2.13-{version}.jar",
            lib.display()
        );
    }
    std::fs::write(&marker, format!("kafka {version}\n"))?;
    eprintln!("[harness] Kafka classpath ready in {:.1?}", t.elapsed());
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_22_base64url_chars() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
