//! TLS to Postgres as libpq's `sslmode` says, on every connection the service opens.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and no `sslrootcert`: the URL's
//! `sslmode` and `sslrootcert` are taken out of it here and become an OpenSSL connector, so that a
//! URL written for `psql` means the same to the service:
//!
//! | `sslmode` | TLS | certificate checked against the authorities | host name checked |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `prefer` (the default) | when the server offers it | | |
//! | `require` | always | only when `sslrootcert` is given (as libpq) | |
//! | `verify-ca` | always | yes | |
//! | `verify-full` | always | yes | yes |
//!
//! The authorities are `sslrootcert`'s file, or the system's when it is not given.

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // `allow` would try plaintext first: nothing the service wants.
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        })
    }

    /// What tokio-postgres is told.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    /// PEM file of the authorities the server's certificate must be signed by.
    pub root_cert: Option<String>,
}

impl Tls {
    /// Whether the server's certificate is checked against the authorities.
    fn verifies(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }

    /// Applies the mode to tokio-postgres' config.
    pub fn configure(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.mode.negotiation());
    }

    /// The OpenSSL connector: the authorities and whether the certificate is checked.
    pub fn ssl_connector(&self) -> Result<SslConnector, String> {
        let describe = |e: openssl::error::ErrorStack| e.to_string();
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(describe)?;
        if self.verifies() {
            builder.set_verify(SslVerifyMode::PEER);
            if let Some(file) = &self.root_cert {
                builder
                    .set_ca_file(file)
                    .map_err(|e| format!("cannot use sslrootcert {file}: {e}"))?;
            }
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        Ok(builder.build())
    }

    /// The connector for tokio-postgres.
    pub fn connector(&self) -> Result<MakeTlsConnector, String> {
        let mut connector = MakeTlsConnector::new(self.ssl_connector()?);
        if self.mode != SslMode::VerifyFull {
            connector.set_callback(|config, _host| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(connector)
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL or `key=value` form): the
/// string left for tokio-postgres, and the TLS settings.
pub fn split(url: &str) -> Result<(String, Tls), String> {
    let mut tls = Tls::default();
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => tls.mode = SslMode::parse(value)?,
            "sslrootcert" => tls.root_cert = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, &percent_decode(value)?)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_string(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let taken = match token.split_once('=') {
                Some((key, value)) => take(key.trim(), value.trim_matches('\''))?,
                None => false,
            };
            if !taken {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok((rest, tls))
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_both_forms() {
        let (rest, tls) =
            split("postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));

        let (rest, tls) =
            split("host=db user=u sslmode=verify-ca sslrootcert='/ca.pem' dbname=app").unwrap();
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/ca.pem"));

        let (rest, tls) = split("postgres://u@db/app").unwrap();
        assert_eq!(rest, "postgres://u@db/app");
        assert_eq!(tls, Tls::default());
        assert_eq!(tls.mode, SslMode::Prefer);

        assert!(split("postgres://u@db/app?sslmode=allow").is_err());
        assert!(split("postgres://u@db/app?sslmode=verify").is_err());
    }

    #[test]
    fn require_checks_the_certificate_only_with_a_root_cert_as_libpq_does() {
        let require = |root: Option<&str>| Tls {
            mode: SslMode::Require,
            root_cert: root.map(str::to_string),
        };
        assert!(!require(None).verifies());
        assert!(require(Some("/ca.pem")).verifies());
        assert!(Tls {
            mode: SslMode::VerifyCa,
            root_cert: None
        }
        .verifies());
        assert!(!Tls {
            mode: SslMode::Prefer,
            root_cert: Some("/ca.pem".into())
        }
        .verifies());
    }
}
