//! Tests of loading, env layering, secrets and validation. Files go to the temp dir under random names.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::validate::{parse_table, topic_name};
use super::*;

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        Self::with_mode(contents, 0o600)
    }

    fn with_mode(contents: &str, mode: u32) -> Self {
        let path =
            std::env::temp_dir().join(format!("outbox-relay-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        set_mode(&path, mode);
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) {}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(toml: &str, pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let file = TempFile::new(toml);
    Config::load_with_env(file.path(), &env(pairs))
}

fn load_err(toml: &str, pairs: &[(&str, &str)]) -> (ConfigError, String) {
    let file = TempFile::new(toml);
    let err = Config::load_with_env(file.path(), &env(pairs)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("config error in {}: ", file.path().display())),
        "error does not name the file: {text}"
    );
    (err, text)
}

#[test]
fn defaults_from_minimal_file() {
    let loaded = load("", &[]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.postgres.host, "127.0.0.1");
    assert_eq!(c.postgres.port, 5432);
    assert_eq!(c.postgres.sslmode, SslMode::Prefer);
    assert!(c.postgres.password.is_empty());
    assert_eq!(c.postgres.slot, "outbox_relay");
    assert!(c.postgres.create_slot);
    assert_eq!(c.outbox.columns.headers(), Some("headers"));
    assert_eq!(c.kafka.security_protocol, SecurityProtocol::Plaintext);
    assert_eq!(c.kafka.transaction_timeout_ms, 60_000);
    assert_eq!(c.routing.topic_template, "outbox.{aggregate_type}");
    assert_eq!(c.errors.on_error, OnError::DeadLetter);
    assert_eq!(c.batch.max_events, 5_000);
    assert_eq!(c.batch.split_events, 50_000);
    assert_eq!(c.retry.max_elapsed_ms, 300_000);
    assert_eq!(
        c.admin.listen_addr(),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.transactional_id(), "outbox-relay.outbox_relay");
    assert_eq!(c.table(), ("public".to_string(), "outbox".to_string()));
    // Config::default() and an empty file agree, and the default config is valid.
    Config::default().validate().unwrap();
    assert_eq!(format!("{:?}", Config::default()), format!("{c:?}"));
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let (err, text) = load_err("bogus = 1\n", &[]);
    assert_eq!(err.key(), Some("bogus"), "{text}");
    assert!(text.contains("unknown key"), "{text}");

    let (err, text) = load_err("[batch]\nmax_event = 5\n", &[]);
    assert_eq!(err.key(), Some("batch.max_event"), "{text}");
    assert!(
        text.contains("max_events"),
        "should list the valid keys: {text}"
    );

    let (err, _) = load_err("[outbox.columns]\nidd = \"x\"\n", &[]);
    assert_eq!(err.key(), Some("outbox.columns.idd"));

    let (err, text) = load_err("", &[("OUTBOX_RELAY__POSTGRES__PASWORD", "hunter2")]);
    assert_eq!(err.key(), Some("postgres.pasword"), "{text}");
    assert!(text.contains("OUTBOX_RELAY__POSTGRES__PASWORD"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn wrong_type_names_the_key_and_hides_secrets() {
    let (err, text) = load_err("[batch]\nmax_events = \"lots\"\n", &[]);
    assert_eq!(err.key(), Some("batch.max_events"), "{text}");
    assert!(text.contains("integer"), "{text}");

    let (err, text) = load_err("[postgres]\npassword = [\"hunter2\"]\n", &[]);
    assert_eq!(err.key(), Some("postgres.password"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.ends_with("postgres.password: invalid type: found sequence, expected a string"),
        "{text}"
    );

    let (err, text) = load_err("[postgres]\npassword = { value = \"hunter2\" }\n", &[]);
    assert_eq!(err.key(), Some("postgres.password"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // serde's own message would be `invalid type: string "hunter2", expected struct PostgresConfig`.
    let (err, text) = load_err("postgres = \"hunter2\"\n", &[]);
    assert_eq!(err.key(), Some("postgres"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let (err, text) = load_err("[kafka]\nproperties = \"ssl.key.password=hunter2\"\n", &[]);
    assert_eq!(err.key(), Some("kafka.properties"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let (err, text) = load_err("", &[("OUTBOX_RELAY__BATCH__MAX_EVENTS", "lots")]);
    assert_eq!(err.key(), Some("batch.max_events"), "{text}");
    assert!(text.contains("OUTBOX_RELAY__BATCH__MAX_EVENTS"), "{text}");
}

#[test]
fn toml_syntax_error_does_not_echo_the_line() {
    let (err, text) = load_err("[postgres]\npassword = \"hunter2\n", &[]);
    assert!(matches!(err, ConfigError::Syntax { .. }), "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn missing_file() {
    let path = std::env::temp_dir().join(format!(
        "outbox-relay-missing-{}.toml",
        uuid::Uuid::new_v4()
    ));
    let err = Config::load_with_env(&path, &HashMap::new()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("cannot read"), "{text}");
}

#[test]
fn env_overrides_nested_keys_with_types() {
    let toml = "[postgres]\nport = 5433\npassword = \"from-file\"\n[batch]\nmax_events = 7\n";
    let loaded = load(
        toml,
        &[
            ("OUTBOX_RELAY__BATCH__MAX_EVENTS", "500"),
            ("OUTBOX_RELAY__POSTGRES__PORT", "6543"),
            ("OUTBOX_RELAY__POSTGRES__CREATE_SLOT", "false"),
            ("outbox_relay__log__format", "json"),
            ("OUTBOX_RELAY__POSTGRES__SSLMODE", "verify-full"),
            ("OUTBOX_RELAY__POSTGRES__SSLROOTCERT", "/etc/ssl/ca.pem"),
            ("OUTBOX_RELAY__ROUTING__TOPICS__BOOKING", "bookings"),
            ("OTHER__BATCH__MAX_EVENTS", "1"),
        ],
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.batch.max_events, 500);
    assert_eq!(c.postgres.port, 6543);
    assert!(!c.postgres.create_slot);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.postgres.sslmode, SslMode::VerifyFull);
    assert_eq!(
        c.routing.topics.get("booking").map(String::as_str),
        Some("bookings")
    );
    assert_eq!(c.postgres.password.expose(), "from-file");
}

#[test]
fn env_strings_that_look_like_numbers_stay_strings() {
    for password in ["12345", "012345", "1e3", "TRUE", "nan", "+7", "1.50"] {
        let loaded = load(
            "[postgres]\npassword = \"from-file\"\n",
            &[
                ("OUTBOX_RELAY__POSTGRES__PASSWORD", password),
                ("OUTBOX_RELAY__POSTGRES__USER", "007"),
                ("OUTBOX_RELAY__KAFKA__TRANSACTIONAL_ID", "0042"),
            ],
        )
        .unwrap();
        let c = &loaded.config;
        assert_eq!(c.postgres.password.expose(), password);
        assert_eq!(c.postgres.user, "007");
        assert_eq!(c.transactional_id(), "0042");
    }
    // In the file, an unquoted number is accepted for a string key as well.
    let loaded = load("[postgres]\npassword = 12345\n", &[]).unwrap();
    assert_eq!(loaded.config.postgres.password.expose(), "12345");
}

#[test]
fn password_file_is_read_and_trimmed() {
    let secret = TempFile::new("s3cret \n");
    let toml = format!(
        "[postgres]\npassword_file = {:?}\n",
        secret.path().display().to_string()
    );
    let loaded = load(&toml, &[]).unwrap();
    assert_eq!(loaded.config.postgres.password.expose(), "s3cret ");
    assert_eq!(loaded.config.postgres.password_file, None);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.config.validate().unwrap();

    // From the environment, and relative to the config file's directory.
    let name = secret.path().file_name().unwrap().to_str().unwrap();
    let loaded = load("", &[("OUTBOX_RELAY__POSTGRES__PASSWORD_FILE", name)]).unwrap();
    assert_eq!(loaded.config.postgres.password.expose(), "s3cret ");

    let kafka = TempFile::with_mode("k4fka\r\n", 0o644);
    let toml = format!(
        "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_username = \"relay\"\nsasl_password_file = {:?}\n",
        kafka.path().display().to_string()
    );
    let loaded = load(&toml, &[]).unwrap();
    assert_eq!(loaded.config.kafka.sasl_password.expose(), "k4fka");
    if cfg!(unix) {
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("kafka.sasl_password_file"));
    }
}

#[test]
fn missing_password_file_names_key_and_path() {
    let missing = std::env::temp_dir().join(format!("outbox-relay-nope-{}", uuid::Uuid::new_v4()));
    let toml = format!(
        "[postgres]\npassword_file = {:?}\n",
        missing.display().to_string()
    );
    let (err, text) = load_err(&toml, &[]);
    assert!(matches!(err, ConfigError::SecretFile { .. }), "{text}");
    assert_eq!(err.key(), Some("postgres.password_file"));
    assert!(text.contains(&missing.display().to_string()), "{text}");

    let empty = TempFile::new("\n");
    let toml = format!(
        "[postgres]\npassword_file = {:?}\n",
        empty.path().display().to_string()
    );
    let (err, text) = load_err(&toml, &[]);
    assert_eq!(err.key(), Some("postgres.password_file"), "{text}");
    assert!(text.contains("is empty"), "{text}");
}

#[test]
fn password_and_password_file_conflict() {
    let (err, text) = load_err(
        "[postgres]\npassword = \"hunter2\"\npassword_file = \"/x\"\n",
        &[],
    );
    assert_eq!(err.key(), Some("postgres.password_file"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let (err, _) = load_err(
        "[postgres]\npassword_file = \"/x\"\n",
        &[("OUTBOX_RELAY__POSTGRES__PASSWORD", "hunter2")],
    );
    assert_eq!(err.key(), Some("postgres.password_file"));

    let (err, _) = load_err(
        "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_username = \"u\"\nsasl_password = \"p\"\nsasl_password_file = \"/x\"\n",
        &[],
    );
    assert_eq!(err.key(), Some("kafka.sasl_password_file"));
}

#[test]
fn owned_kafka_property_is_refused() {
    let (err, text) = load_err(
        "[kafka.properties]\n\"enable.idempotence\" = \"false\"\n",
        &[],
    );
    assert_eq!(
        err.key(),
        Some("kafka.properties.\"enable.idempotence\""),
        "{text}"
    );
    for owned in ["acks", "transactional.id", "group.id", "sasl.password"] {
        let (err, _) = load_err(&format!("[kafka.properties]\n{owned:?} = \"x\"\n"), &[]);
        assert_eq!(
            err.key(),
            Some(format!("kafka.properties.{owned:?}").as_str())
        );
    }
}

#[test]
fn passthrough_and_client_properties() {
    let toml = "[kafka]\nbootstrap_servers = \"b1:9092,b2:9092\"\nsecurity_protocol = \"sasl_ssl\"\n\
                sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"relay\"\nssl_ca_location = \"/ca.pem\"\n\
                [kafka.properties]\n\"linger.ms\" = 5\n\"client.id\" = \"relay-1\"\n";
    let loaded = load(toml, &[("OUTBOX_RELAY__KAFKA__SASL_PASSWORD", "pw")]).unwrap();
    let props = loaded.config.kafka.client_props();
    let names: Vec<&str> = props.names().collect();
    assert_eq!(
        names,
        [
            "bootstrap.servers",
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
            "ssl.ca.location",
            "client.id",
            "linger.ms",
        ]
    );
    let cc = props.client_config();
    for (k, v) in [
        ("bootstrap.servers", "b1:9092,b2:9092"),
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "SCRAM-SHA-256"),
        ("sasl.username", "relay"),
        ("sasl.password", "pw"),
        ("ssl.ca.location", "/ca.pem"),
        ("client.id", "relay-1"),
        ("linger.ms", "5"),
    ] {
        assert_eq!(cc.get(k), Some(v), "{k}");
    }
    assert!(!format!("{:?}", loaded.config).contains("\"pw\""));
    assert!(!format!("{props:?}").contains("\"pw\""));

    let plain = Config::default().kafka.client_props();
    assert_eq!(plain.names().count(), 2, "{plain:?}");
}

#[test]
fn sasl_settings_must_match_the_protocol() {
    let (err, _) = load_err(
        "[kafka]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_username = \"u\"\n",
        &[],
    );
    assert_eq!(err.key(), Some("kafka.sasl_password"));
    let (err, _) = load_err("[kafka]\nsasl_username = \"u\"\n", &[]);
    assert_eq!(err.key(), Some("kafka.sasl_username"));
    let (err, _) = load_err("[kafka]\nssl_ca_location = \"/ca.pem\"\n", &[]);
    assert_eq!(err.key(), Some("kafka.ssl_ca_location"));
}

#[test]
fn invalid_topic_names() {
    let (err, text) = load_err("[kafka]\ncheckpoint_topic = \"bad topic!\"\n", &[]);
    assert_eq!(err.key(), Some("kafka.checkpoint_topic"), "{text}");
    let (err, _) = load_err("[errors]\ndead_letter_topic = \"\"\n", &[]);
    assert_eq!(err.key(), Some("errors.dead_letter_topic"));
    let (err, _) = load_err("[routing.topics]\nBooking = \"a/b\"\n", &[]);
    assert_eq!(err.key(), Some("routing.topics.\"Booking\""));
    let (err, _) = load_err("[routing]\ntopic_template = \"outbox.{aggregate}\"\n", &[]);
    assert_eq!(err.key(), Some("routing.topic_template"));
    let (err, _) = load_err(
        "[routing]\ntopic_template = \"outbox {aggregate_type}\"\n",
        &[],
    );
    assert_eq!(err.key(), Some("routing.topic_template"));

    assert!(topic_name(&"a".repeat(249)).is_ok());
    assert!(topic_name(&"a".repeat(250)).is_err());
    assert!(topic_name("..").is_err());
    assert!(topic_name("a.b_c-D9").is_ok());
}

#[test]
fn routing_keys_keep_their_case_in_the_file() {
    let loaded = load(
        "[routing]\nstrict = true\n[routing.topics]\nBooking = \"bookings\"\n\"com.acme.Car\" = \"cars\"\n",
        &[],
    )
    .unwrap();
    let topics = &loaded.config.routing.topics;
    assert_eq!(topics.get("Booking").map(String::as_str), Some("bookings"));
    assert_eq!(topics.get("com.acme.Car").map(String::as_str), Some("cars"));
}

#[test]
fn invalid_enum_lists_valid_values() {
    let (err, text) = load_err("[postgres]\nsslmode = \"verify_full\"\n", &[]);
    assert_eq!(err.key(), Some("postgres.sslmode"), "{text}");
    for valid in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
        assert!(text.contains(valid), "{text}");
    }
    let (err, text) = load_err("[kafka]\nsasl_mechanism = \"scram-sha-512\"\n", &[]);
    assert_eq!(err.key(), Some("kafka.sasl_mechanism"), "{text}");
    assert!(text.contains("SCRAM-SHA-512"), "{text}");
    let (err, _) = load_err("", &[("OUTBOX_RELAY__ERRORS__ON_ERROR", "ignore")]);
    assert_eq!(err.key(), Some("errors.on_error"));
}

#[test]
fn verify_full_needs_sslrootcert() {
    let (err, text) = load_err("[postgres]\nsslmode = \"verify-full\"\n", &[]);
    assert_eq!(err.key(), Some("postgres.sslrootcert"), "{text}");
    assert!(text.contains("verify-full"), "{text}");
    load(
        "[postgres]\nsslmode = \"verify-ca\"\nsslrootcert = \"/ca.pem\"\n",
        &[],
    )
    .unwrap();
}

#[test]
fn value_checks_name_the_key() {
    let cases = [
        (
            "[batch]\nmax_events = 0\n",
            "batch.max_events",
            "must be at least 1",
        ),
        (
            "[batch]\nsplit_events = 0\n",
            "batch.split_events",
            "must be at least 1",
        ),
        (
            "[postgres]\nport = 0\n",
            "postgres.port",
            "must be at least 1",
        ),
        ("[postgres]\nport = 70000\n", "postgres.port", "16"),
        (
            "[postgres]\nslot = \"Outbox-Relay\"\n",
            "postgres.slot",
            "lowercase",
        ),
        ("[outbox]\ntable = \"a.b.c\"\n", "outbox.table", "two parts"),
        (
            "[outbox.columns]\npayload = \"\"\n",
            "outbox.columns.payload",
            "empty",
        ),
        (
            "[retry]\nmax_backoff_ms = 10\n",
            "retry.max_backoff_ms",
            "initial_backoff_ms",
        ),
        (
            "[admin]\nlisten = \"localhost\"\n",
            "admin.listen",
            "ip:port",
        ),
        ("[log]\nlevel = \"info,[[\"\n", "log.level", "filter"),
        (
            "[kafka]\ntransaction_timeout_ms = 10\n",
            "kafka.transaction_timeout_ms",
            "1000",
        ),
        ("[routing]\nstrict = true\n", "routing.strict", "unroutable"),
    ];
    for (toml, key, fragment) in cases {
        let (err, text) = load_err(toml, &[]);
        assert_eq!(err.key(), Some(key), "{text}");
        assert!(text.contains(&format!(": {key}: ")), "{text}");
        assert!(text.contains(fragment), "{text}");
    }
    let text = ConfigError::invalid("batch.max_events", "must be at least 1").to_string();
    assert_eq!(text, "config error: batch.max_events: must be at least 1");
    load("[admin]\nlisten = \"\"\n", &[]).unwrap();
}

#[test]
fn readable_config_file_with_a_secret_warns() {
    let toml = "[postgres]\npassword = \"hunter2\"\n";
    let file = TempFile::with_mode(toml, 0o644);
    let loaded = Config::load_with_env(file.path(), &HashMap::new()).unwrap();
    if cfg!(unix) {
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("postgres.password"));
        assert!(!loaded.warnings[0].contains("hunter2"));
    }
    // Same file, private: no warning.
    let file = TempFile::with_mode(toml, 0o600);
    assert!(Config::load_with_env(file.path(), &HashMap::new())
        .unwrap()
        .warnings
        .is_empty());
    // Readable, but the password comes from the environment: no warning.
    let file = TempFile::with_mode("", 0o644);
    let loaded = Config::load_with_env(
        file.path(),
        &env(&[("OUTBOX_RELAY__POSTGRES__PASSWORD", "x")]),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn secret_prints_stars() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?}"), "***");
    assert_eq!(format!("{s}"), "***");
    assert_eq!(s.expose(), "hunter2");
    let loaded = load("[postgres]\npassword = \"hunter2\"\n", &[]).unwrap();
    assert!(!format!("{loaded:?}").contains("hunter2"));
}

#[test]
fn debezium_column_layout() {
    let toml = r#"
[outbox]
table = "inventory.outboxevent"
[outbox.columns]
id = "id"
aggregate_type = "aggregatetype"
aggregate_id = "aggregateid"
event_type = "type"
payload = "payload"
headers = ""
created_at = ""
"#;
    let c = load(toml, &[]).unwrap().config;
    assert_eq!(
        c.table(),
        ("inventory".to_string(), "outboxevent".to_string())
    );
    assert_eq!(c.outbox.columns.aggregate_type, "aggregatetype");
    assert_eq!(c.outbox.columns.event_type, "type");
    assert_eq!(c.outbox.columns.headers(), None);
    assert_eq!(c.outbox.columns.created_at(), None);
}

#[test]
fn table_names_parse_like_sql() {
    let t = |s| parse_table(s);
    assert_eq!(t("outbox"), Ok(("public".into(), "outbox".into())));
    assert_eq!(t("Sales.Outbox"), Ok(("sales".into(), "outbox".into())));
    assert_eq!(
        t("\"Sales\".\"Out.box\""),
        Ok(("Sales".into(), "Out.box".into()))
    );
    assert_eq!(t("\"a\"\"b\""), Ok(("public".into(), "a\"b".into())));
    for bad in ["", ".outbox", "outbox.", "a b", "\"open", "1abc", "a.b.c"] {
        assert!(t(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn more_invalid_values_each_name_their_key() {
    let long = "p".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        ("[routing.topics]\n\"\" = \"x\"\n".into(), "routing.topics.\"\""),
        (
            "[routing.topics]\nBooking = \"cp\"\n[kafka]\ncheckpoint_topic = \"cp\"\n".into(),
            "routing.topics.\"Booking\"",
        ),
        ("[routing]\nstrict = true\n".into(), "routing.strict"),
        (
            "[errors]\ndead_letter_topic = \"cp\"\n[kafka]\ncheckpoint_topic = \"cp\"\n".into(),
            "errors.dead_letter_topic",
        ),
        (
            "[postgres]\nsslmode = \"disable\"\nsslrootcert = \"/ca.pem\"\n".into(),
            "postgres.sslrootcert",
        ),
        (format!("[postgres]\npublication = \"{long}\"\n"), "postgres.publication"),
        (format!("[postgres]\nslot = \"{long}\"\n"), "postgres.slot"),
        ("[routing]\ntopic_template = \"a}b\"\n".into(), "routing.topic_template"),
        ("[kafka.properties]\n\" \" = \"x\"\n".into(), "kafka.properties.\" \""),
        ("[kafka]\nbootstrap_servers = \"a:1,,b:2\"\n".into(), "kafka.bootstrap_servers"),
        (
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n".into(),
            "kafka.sasl_username",
        ),
        (
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"\n"
                .into(),
            "kafka.sasl_password",
        ),
        ("[kafka]\nsasl_password = \"pw\"\n".into(), "kafka.sasl_password"),
        ("[kafka]\nssl_ca_location = \"/ca.pem\"\n".into(), "kafka.ssl_ca_location"),
        ("[outbox]\ntable = '\"\".outbox'\n".into(), "outbox.table"),
        (format!("[outbox]\ntable = \"public.{long}\"\n"), "outbox.table"),
    ];
    for (toml, key) in cases {
        let (err, text) = load_err(&toml, &[]);
        assert_eq!(err.key(), Some(key), "{toml}: {text}");
        assert!(
            err.path()
                .to_string_lossy()
                .contains("outbox-relay-config-"),
            "{text}"
        );
        assert!(!text.contains("pw\""), "{text}");
    }
}

#[test]
fn sasl_plain_over_plaintext_loads_with_a_warning() {
    let loaded = load(
        "[kafka]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = \"pw\"\n",
        &[],
    )
    .unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("kafka.sasl_mechanism") && w.contains("unencrypted")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn host_lists_take_a_port_per_entry_and_name_a_bad_one() {
    let h = super::parse_hosts("db1, db2:5433,[::1]:5434,::1,[fe80::1]", 5432).expect("valid");
    let want: Vec<(String, u16)> = [
        ("db1", 5432),
        ("db2", 5433),
        ("::1", 5434),
        ("::1", 5432),
        ("fe80::1", 5432),
    ]
    .iter()
    .map(|(h, p)| (h.to_string(), *p))
    .collect();
    assert_eq!(h, want);
    for (bad, says) in [
        ("db1,,db2", "without empty entries"),
        ("db1:0", "\"db1:0\": the port"),
        ("db1:x", "\"db1:x\": the port"),
        (":5432", "no host before"),
        ("[::1", "lacks its ']'"),
        ("[::1]x", "only ':<port>'"),
    ] {
        let e = super::parse_hosts(bad, 5432).expect_err(bad);
        assert!(e.contains(says), "{bad}: {e}");
    }
}
