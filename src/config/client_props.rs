//! librdkafka properties as the relay hands them to its Kafka clients, secrets kept as [`Secret`]s.
//!
//! The producer, the checkpoint reader and the metadata clients all start from the same list:
//! `bootstrap.servers`, `security.protocol`, the SASL settings, the CA, then the
//! `[kafka.properties]` passthrough. Values librdkafka itself treats as sensitive (its
//! `_RK_SENSITIVE` properties: passwords, private keys, OAuth secrets) are stored as [`Secret`]
//! from the moment the configuration is read, print as `***`, and are exposed in exactly one
//! place: [`ClientProps::client_config`], which builds the client library's own configuration.

use std::fmt;

use rdkafka::ClientConfig;

use super::{KafkaConfig, Secret};

/// librdkafka's sensitive properties (marked `_RK_SENSITIVE` in `rdkafka_conf.c`).
pub const SENSITIVE_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
];

/// Whether librdkafka treats the property `name` as a secret.
pub fn is_sensitive(name: &str) -> bool {
    SENSITIVE_PROPERTIES.contains(&name.trim())
}

#[derive(Clone, PartialEq, Eq)]
enum Value {
    Plain(String),
    Secret(Secret),
}

/// An ordered list of librdkafka properties; sensitive values are [`Secret`]s.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProps(Vec<(String, Value)>);

impl ClientProps {
    /// Appends `name = value`, as a secret when librdkafka treats `name` as sensitive.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let name = name.into();
        let value = value.into();
        let value = if is_sensitive(&name) {
            Value::Secret(Secret::new(value))
        } else {
            Value::Plain(value)
        };
        self.0.push((name, value));
        self
    }

    /// Appends a secret.
    pub fn set_secret(&mut self, name: impl Into<String>, value: Secret) -> &mut Self {
        self.0.push((name.into(), Value::Secret(value)));
        self
    }

    /// The value of a non-secret property (the last one set), for messages: `None` for secrets.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match v {
                Value::Plain(s) => Some(s.as_str()),
                Value::Secret(_) => None,
            })
    }

    /// Property names, in order (for tests and messages).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The client library's configuration: the one place secret values are exposed.
    pub fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in &self.0 {
            match v {
                Value::Plain(s) => cc.set(k, s),
                Value::Secret(s) => cc.set(k, s.expose()),
            };
        }
        cc
    }

    /// The brokers, for messages.
    pub fn servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or("")
    }

    /// The SASL user, for messages.
    pub fn sasl_user(&self) -> &str {
        self.get("sasl.username").unwrap_or("")
    }

    /// The properties for `[kafka]`: `bootstrap.servers`, `security.protocol`, `sasl.*`,
    /// `ssl.ca.location`, then the `[kafka.properties]` passthrough (sorted by name).
    pub fn from_config(k: &KafkaConfig) -> Self {
        let mut props = ClientProps::default();
        props
            .set("bootstrap.servers", k.bootstrap_servers.clone())
            .set("security.protocol", k.security_protocol.as_str());
        if k.security_protocol.is_sasl() {
            props.set("sasl.mechanism", k.sasl_mechanism.as_str());
            if let Some(user) = &k.sasl_username {
                props.set("sasl.username", user.clone());
            }
            props.set_secret("sasl.password", k.sasl_password.clone());
        }
        if let Some(ca) = &k.ssl_ca_location {
            props.set("ssl.ca.location", ca.to_string_lossy());
        }
        for (name, value) in k.properties.iter() {
            props.set(name.clone(), value.clone());
        }
        props
    }
}

impl fmt::Debug for ClientProps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k.as_str(),
                    match v {
                        Value::Plain(s) => s.as_str(),
                        Value::Secret(_) => "***",
                    },
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_marked_by_librdkafkas_list_and_exposed_only_to_the_client() {
        let mut p = ClientProps::default();
        p.set("bootstrap.servers", "b:9092")
            .set("ssl.key.password", "keypw-never-printed")
            .set_secret("sasl.password", Secret::new("pw-never-printed"))
            .set("linger.ms", "5");
        let text = format!("{p:?}");
        assert!(!text.contains("never-printed"), "{text}");
        assert!(text.contains("\"linger.ms\": \"5\""), "{text}");
        assert_eq!(p.get("ssl.key.password"), None);
        assert_eq!(p.servers(), "b:9092");
        let cc = p.client_config();
        assert_eq!(cc.get("sasl.password"), Some("pw-never-printed"));
        assert_eq!(cc.get("ssl.key.password"), Some("keypw-never-printed"));
        assert!(is_sensitive("ssl.keystore.password") && !is_sensitive("ssl.ca.location"));
    }
}
