//! `[kafka.security]`: how every Kafka client connects and authenticates (TLS, SASL, or both),
//! the librdkafka properties that follow from it, and the rules its keys must keep together.
//! Its secrets are [`Secret`]s, never printed.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How every Kafka client of the service (the reader, the writers, recovery's scan, the start-up
/// check) connects and authenticates, given once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `sasl_*` protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: String,
    /// The password itself (best set from the environment, `..._KAFKA__SECURITY__PASSWORD`)...
    pub password: Secret,
    /// ...or a file that holds it (a mounted secret; a final newline is not part of it).
    pub password_file: String,
    /// PEM file of the authorities that signed the brokers' certificates; empty: the system's.
    pub ca_file: String,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub certificate_file: String,
    pub key_file: String,
    pub key_password: Secret,
    /// Check that a broker's certificate names the host connected to.
    pub verify_hostname: bool,
}

impl Default for KafkaSecurityConfig {
    fn default() -> Self {
        KafkaSecurityConfig {
            protocol: SecurityProtocol::default(),
            sasl_mechanism: None,
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            ca_file: String::new(),
            certificate_file: String::new(),
            key_file: String::new(),
            key_password: Secret::default(),
            verify_hostname: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    #[serde(alias = "SSL")]
    Ssl,
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value never printed: `Debug` shows `***` (or nothing when it is empty).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Shown as `Debug` shows it: a written config never holds the secret.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The librdkafka properties `[kafka.security]` sets; the service's own: `kafka.consumer` and
/// `kafka.producer` may not set them.
pub(super) const SECURITY_PROPERTIES: [&str; 9] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
];

impl KafkaSecurityConfig {
    /// The librdkafka properties every client is created with (none for plaintext, librdkafka's
    /// default).
    pub fn properties(&self) -> Vec<(String, String)> {
        if self.protocol == SecurityProtocol::Plaintext {
            return Vec::new();
        }
        let mut p = vec![("security.protocol", self.protocol.as_str().to_string())];
        if self.protocol.sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                p.push(("sasl.mechanism", mechanism.as_str().to_string()));
            }
            p.push(("sasl.username", self.username.clone()));
            p.push(("sasl.password", self.password.expose().to_string()));
        }
        if self.protocol.tls() {
            let files = [
                ("ssl.ca.location", &self.ca_file),
                ("ssl.certificate.location", &self.certificate_file),
                ("ssl.key.location", &self.key_file),
            ];
            for (key, file) in files {
                if !file.is_empty() {
                    p.push((key, file.clone()));
                }
            }
            if !self.key_password.is_empty() {
                p.push(("ssl.key.password", self.key_password.expose().to_string()));
            }
            let check = if self.verify_hostname {
                "https"
            } else {
                "none"
            };
            p.push(("ssl.endpoint.identification.algorithm", check.to_string()));
        }
        p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// One line for `check-config`, the password masked.
    pub fn describe(&self) -> String {
        let mut line = format!("protocol={}", self.protocol.as_str());
        if self.protocol.sasl() {
            let mechanism = self.sasl_mechanism.map_or("?", SaslMechanism::as_str);
            let from = match self.password_file.is_empty() {
                true => String::new(),
                false => format!(" (from {})", self.password_file),
            };
            line += &format!(
                " sasl_mechanism={mechanism} username={} password=***{from}",
                self.username
            );
        }
        if self.protocol.tls() {
            let ca = match self.ca_file.is_empty() {
                true => "the system's",
                false => &self.ca_file,
            };
            line += &format!(" ca_file={ca} verify_hostname={}", self.verify_hostname);
            if !self.certificate_file.is_empty() {
                line += &format!(" certificate_file={}", self.certificate_file);
            }
        }
        line
    }

    /// Reads `password_file` into the password.
    pub(super) fn read_password_file(&mut self) -> Result<(), ConfigError> {
        if self.password_file.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| {
            ConfigError::key(
                "kafka.security.password_file",
                format!("cannot read {}: {e}", self.password_file),
            )
        })?;
        self.password = Secret(text.strip_suffix('\n').unwrap_or(&text).to_string());
        Ok(())
    }

    /// The keys that must go together, in the order of the section: the first broken rule is
    /// the error.
    pub(super) fn validate(&self, password_given: bool) -> Result<(), ConfigError> {
        self.validate_sasl(password_given)?;
        self.validate_tls_files()
    }

    /// A `sasl_*` protocol needs a mechanism, a username and one password; another protocol
    /// takes none of them.
    fn validate_sasl(&self, password_given: bool) -> Result<(), ConfigError> {
        if !self.protocol.sasl() {
            if self.sasl_mechanism.is_some() || !self.username.is_empty() || password_given {
                return Err(ConfigError::key(
                    &security_key("protocol"),
                    "is not sasl_plaintext or sasl_ssl, so a SASL mechanism, username or password \
                     would be ignored",
                ));
            }
            return Ok(());
        }
        if self.sasl_mechanism.is_none() {
            return Err(ConfigError::key(
                &security_key("sasl_mechanism"),
                "is required with a sasl_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            ));
        }
        if self.username.trim().is_empty() {
            return Err(ConfigError::key(
                &security_key("username"),
                "is required with a sasl_* protocol",
            ));
        }
        // Both given, or neither.
        if password_given != self.password_file.is_empty() {
            return Err(ConfigError::key(
                &security_key("password"),
                "give exactly one of password and password_file with a sasl_* protocol",
            ));
        }
        Ok(())
    }

    /// The files are for a TLS protocol only, must be readable, and a client certificate comes
    /// with its key.
    fn validate_tls_files(&self) -> Result<(), ConfigError> {
        let files = [
            ("ca_file", &self.ca_file),
            ("certificate_file", &self.certificate_file),
            ("key_file", &self.key_file),
        ];
        for (name, file) in files {
            if file.is_empty() {
                continue;
            }
            if !self.protocol.tls() {
                return Err(ConfigError::key(
                    &security_key(name),
                    "is only used with the ssl and sasl_ssl protocols",
                ));
            }
            if let Err(e) = std::fs::metadata(file) {
                return Err(ConfigError::key(
                    &security_key(name),
                    format!("cannot read {file}: {e}"),
                ));
            }
        }
        if self.certificate_file.is_empty() != self.key_file.is_empty() {
            return Err(ConfigError::key(
                &security_key("key_file"),
                "certificate_file and key_file go together",
            ));
        }
        Ok(())
    }
}

/// `kafka.security.<name>`, as an error names it.
fn security_key(name: &str) -> String {
    format!("kafka.security.{name}")
}
