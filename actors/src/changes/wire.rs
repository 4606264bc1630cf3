//! A replication connection: the few messages of Postgres' wire protocol the logical mode's
//! stream needs, over TCP (with TLS) or a Unix socket (tokio-postgres does not open replication
//! connections).
//!
//! It starts with `replication=database`, authenticates (trust, password, MD5 or SCRAM-SHA-256),
//! over TLS as the URL's `sslmode` and `sslrootcert` say (as every other connection of the
//! service), and then reads whole messages ([`Wire::read`]) and writes frontend messages built
//! with `postgres-protocol`. What it cannot do comes back as [`WireError::Unsupported`], and the
//! caller reads the slot with SQL calls instead.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_postgres::config::Host;

use crate::postgres::tls::{SslMode as TlsMode, Tls};
use crate::postgres::PostgresSettings;

/// Why a replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// What this connection cannot do (TLS, an authentication it does not speak).
    #[error("{0}")]
    Unsupported(String),
    /// The server said no: its SQLSTATE and message.
    #[error("{message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    #[error("unexpected message {0:?} from the server")]
    Unexpected(char),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

type Reader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// One replication connection.
pub struct Wire {
    reader: Reader,
    writer: Writer,
    out: BytesMut,
}

/// One message from the server: its tag and body.
pub struct Incoming {
    pub tag: u8,
    pub body: BytesMut,
}

impl Wire {
    /// Connects as `settings` say, with `application_name`, ready for a replication command.
    pub async fn connect(
        settings: &PostgresSettings,
        application_name: &str,
    ) -> Result<Wire, WireError> {
        let (config, tls) = settings
            .client_config()
            .map_err(|e| WireError::Unsupported(e.to_string()))?;
        let timeout = settings.connect_timeout;
        let mut wire = tokio::time::timeout(timeout, open(&config, &tls))
            .await
            .map_err(|_| WireError::TimedOut(timeout))??;
        let user = config.get_user().unwrap_or("postgres").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
        ];
        frontend::startup_message(params.iter().copied(), &mut wire.out)?;
        wire.flush().await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        tokio::time::timeout(timeout, wire.authenticate(&user, password.as_deref()))
            .await
            .map_err(|_| WireError::TimedOut(timeout))??;
        Ok(wire)
    }

    /// Until the server is ready for a query, answering what it asks to authenticate.
    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), WireError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut m = self.read().await?;
            match m.tag {
                b'R' => {
                    let code = m.body.get_i32();
                    let password = || {
                        password.ok_or_else(|| {
                            WireError::Unsupported("the server asks for a password".into())
                        })
                    };
                    match code {
                        0 => {}
                        3 => frontend::password_message(password()?, &mut self.out)?,
                        5 => {
                            let salt = [m.body[0], m.body[1], m.body[2], m.body[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password()?,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.out)?;
                        }
                        10 => {
                            let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut self.out,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or(WireError::Unexpected('R'))?;
                            s.update(&m.body)?;
                            frontend::sasl_response(s.message(), &mut self.out)?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or(WireError::Unexpected('R'))?;
                            s.finish(&m.body)?;
                        }
                        other => {
                            return Err(WireError::Unsupported(format!(
                                "the server asks for authentication {other}"
                            )))
                        }
                    }
                    self.flush().await?;
                }
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {}
                tag => return Err(WireError::Unexpected(tag as char)),
            }
        }
    }

    /// The next message; an error response is returned as [`WireError::Server`]. Not to be
    /// cancelled halfway: [`Wire::read_in_background`] is for reads with a timeout.
    pub async fn read(&mut self) -> Result<Incoming, WireError> {
        read_from(&mut self.reader).await
    }

    /// From now on every message is read by a task of its own and comes through the returned
    /// channel (whose reads may be cancelled); the task ends with the connection or when the
    /// channel is dropped.
    pub fn read_in_background(
        &mut self,
    ) -> tokio::sync::mpsc::Receiver<Result<Incoming, WireError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let empty: Box<dyn AsyncRead + Unpin + Send> = Box::new(tokio::io::empty());
        let mut reader = std::mem::replace(&mut self.reader, BufReader::new(empty));
        tokio::spawn(async move {
            loop {
                let message = read_from(&mut reader).await;
                let end = message.is_err();
                if tx.send(message).await.is_err() || end {
                    return;
                }
            }
        });
        rx
    }

    /// Sends a simple query (a replication command).
    pub async fn query(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await
    }

    /// Sends `data` as one CopyData message.
    pub async fn copy_data(&mut self, data: &[u8]) -> Result<(), WireError> {
        frontend::CopyData::new(data)?.write(&mut self.out);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.writer.write_all(&self.out).await?;
        self.writer.flush().await?;
        self.out.clear();
        Ok(())
    }
}

async fn read_from(reader: &mut Reader) -> Result<Incoming, WireError> {
    let tag = reader.read_u8().await?;
    let len = reader.read_i32().await?;
    let mut body = BytesMut::zeroed((len.max(4) - 4) as usize);
    reader.read_exact(&mut body).await?;
    if tag == b'E' {
        return Err(server_error(&body));
    }
    Ok(Incoming { tag, body })
}

/// The socket to the first host of `config`, over TLS as `tls` says (never over a Unix
/// socket, as libpq).
async fn open(config: &tokio_postgres::Config, tls: &Tls) -> Result<Wire, WireError> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let (reader, writer): (Box<dyn AsyncRead + Unpin + Send>, Writer) =
        match config.get_hosts().first() {
            Some(Host::Tcp(host)) => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                if tls.mode != TlsMode::Disable && offers_tls(&mut stream).await? {
                    let (r, w) = tokio::io::split(encrypt(stream, tls, host).await?);
                    (Box::new(r), Box::new(w))
                } else if matches!(tls.mode, TlsMode::Disable | TlsMode::Prefer) {
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w))
                } else {
                    return Err(WireError::Unsupported("the server offers no TLS".into()));
                }
            }
            #[cfg(unix)]
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                (Box::new(r), Box::new(w))
            }
            _ => return Err(WireError::Unsupported("no host to connect to".into())),
        };
    Ok(Wire {
        reader: BufReader::new(reader),
        writer,
        out: BytesMut::new(),
    })
}

/// Asks for TLS (an SSLRequest); whether the server agreed.
async fn offers_tls(stream: &mut tokio::net::TcpStream) -> Result<bool, WireError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    Ok(stream.read_u8().await? == b'S')
}

/// The TLS handshake, the certificate (and, with verify-full, the host name) checked as the
/// service's other connections check it.
async fn encrypt(
    stream: tokio::net::TcpStream,
    tls: &Tls,
    host: &str,
) -> Result<tokio_openssl::SslStream<tokio::net::TcpStream>, WireError> {
    let tls_error = |e: String| WireError::Unsupported(format!("TLS: {e}"));
    let connector = tls.ssl_connector().map_err(tls_error)?;
    let ssl = connector
        .configure()
        .map_err(|e| tls_error(e.to_string()))?
        .verify_hostname(tls.mode == TlsMode::VerifyFull)
        .into_ssl(host)
        .map_err(|e| tls_error(e.to_string()))?;
    let mut stream =
        tokio_openssl::SslStream::new(ssl, stream).map_err(|e| tls_error(e.to_string()))?;
    std::pin::Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| tls_error(e.to_string()))?;
    Ok(stream)
}

/// An ErrorResponse's SQLSTATE and message.
fn server_error(body: &[u8]) -> WireError {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', rest)) => code = String::from_utf8_lossy(rest).into_owned(),
            Some((b'M', rest)) => message = String::from_utf8_lossy(rest).into_owned(),
            _ => {}
        }
    }
    WireError::Server { code, message }
}
