//! A broker reached over SASL_SSL with SCRAM-SHA-512, as a managed cluster is: a Tansu broker of
//! the test's own that requires SCRAM, with TLS put in front of it by stunnel (Tansu 0.6.0's own
//! TLS does not come up), and certificates made by openssl for the occasion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{cluster, free_port, wait_listening};

pub const USER: &str = "notifier";

pub struct SecureBroker {
    pub dir: PathBuf,
    /// The TLS port clients connect to (and the broker advertises).
    pub tls_port: u16,
    /// The broker's own plaintext port, behind stunnel.
    plain_port: u16,
    pub password: String,
    /// The authority that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// An authority that signed nothing of this broker's.
    pub other_ca_file: PathBuf,
    broker: Option<Child>,
    stunnel: Option<Child>,
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("run {program} (scripts/ensure-test-tools.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed authority `name`.pem (and its key) in `dir`.
fn authority(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subject = format!("/CN=campaign-notifier test {name}");
    run(
        dir,
        "openssl",
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &key, "-out",
            &pem, "-subj", &subject,
        ],
    );
}

/// In `dir`: the authority `ca.pem`, a server certificate `server.pem` (key `server.key`) it
/// signed for the names `san` (`IP:127.0.0.1,DNS:localhost`), and `other-ca.pem`, an authority
/// that signed nothing.
fn certificates(dir: &Path, san: &str) {
    authority(dir, "ca");
    authority(dir, "other-ca");
    std::fs::write(dir.join("san.ext"), format!("subjectAltName={san}\n")).expect("san.ext");
    let request = "-newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1";
    let sign = "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -out server.pem -extfile san.ext";
    let request: Vec<&str> = std::iter::once("req").chain(request.split(' ')).collect();
    run(dir, "openssl", &request);
    run(dir, "openssl", &sign.split_whitespace().collect::<Vec<_>>());
}

impl SecureBroker {
    pub fn start(dir: PathBuf) -> SecureBroker {
        // A fresh broker: no users, topics or certificates of an earlier run.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        certificates(&dir, "IP:127.0.0.1,DNS:localhost");
        let mut broker = SecureBroker {
            tls_port: free_port(),
            plain_port: free_port(),
            password: format!("pw-{}", super::random_below(1 << 40)),
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            dir,
            broker: None,
            stunnel: None,
        };
        // The user is made while the broker takes anyone, as Tansu wants it; then it restarts
        // requiring SCRAM and advertising the TLS port.
        broker.start_broker(false);
        let plain = format!("tcp://127.0.0.1:{}", broker.plain_port);
        run(
            &broker.dir,
            "tansu",
            &[
                "user",
                "create",
                "--broker",
                &plain,
                "--mechanism",
                "scram512",
                USER,
                &broker.password,
            ],
        );
        broker.stop_broker();
        broker.start_broker(true);
        broker.start_stunnel();
        broker
    }

    fn start_broker(&mut self, authenticated: bool) {
        let listen = format!("tcp://127.0.0.1:{}", self.plain_port);
        let advertised = match authenticated {
            true => format!("tcp://127.0.0.1:{}", self.tls_port),
            false => listen.clone(),
        };
        let log_path = self.dir.join("tansu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("broker log");
        let mut command = Command::new("tansu");
        command
            .args(["broker", "--listener-url", &listen])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://broker.db"]);
        if authenticated {
            command.arg("--authentication");
        }
        let child = command
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (scripts/test.sh installs it)");
        self.broker = Some(child);
        wait_listening(self.plain_port, "tansu", &log_path);
    }

    fn stop_broker(&mut self) {
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_stunnel(&mut self) {
        let log = self.dir.join("stunnel.log");
        let config = format!(
            "foreground = yes\npid =\noutput = {log}\n[kafka]\naccept = 127.0.0.1:{tls}\n\
             connect = 127.0.0.1:{plain}\ncert = {dir}/server.pem\nkey = {dir}/server.key\n",
            log = log.display(),
            tls = self.tls_port,
            plain = self.plain_port,
            dir = self.dir.display(),
        );
        let path = self.dir.join("stunnel.conf");
        std::fs::write(&path, config).expect("write stunnel.conf");
        let child = Command::new("stunnel4")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel4 (scripts/ensure-test-tools.sh installs it)");
        self.stunnel = Some(child);
        wait_listening(self.tls_port, "stunnel", &log);
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// What a client of this broker needs: SASL_SSL, SCRAM-SHA-512, the user, the authority.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL".to_string()),
            ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
            ("sasl.username", USER.to_string()),
            ("sasl.password", self.password.clone()),
            ("ssl.ca.location", self.ca_file.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.stunnel.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_broker();
    }
}

/// A Postgres of the test's own with `ssl = on`, on its own port and data directory (the shared
/// server is never reconfigured). Its certificate names 127.0.0.1 only, so `localhost` is a host
/// name it does not match.
pub struct TlsPostgres {
    pub port: u16,
    pub ca_file: PathBuf,
    pub other_ca_file: PathBuf,
    data: PathBuf,
}

impl TlsPostgres {
    pub fn start(dir: PathBuf) -> TlsPostgres {
        TlsPostgres::start_with(dir, "")
    }

    /// The same with `wal_level = logical` and room for replication slots.
    pub fn start_logical(dir: PathBuf) -> TlsPostgres {
        let logical = "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n";
        TlsPostgres::start_with(dir, logical)
    }

    fn start_with(dir: PathBuf, more_conf: &str) -> TlsPostgres {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("postgres dir");
        certificates(&dir, "IP:127.0.0.1");
        run(&dir, "chmod", &["0600", "server.key"]);
        run(&dir, "chmod", &["0755", "."]);
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.pem'\nssl_key_file = '{dir}/server.key'\n\
             fsync = off\n{more_conf}",
            dir = dir.display()
        );
        // The server's own files, certificates included, belong to the user it runs as.
        let data = cluster::init(&dir, &conf);
        cluster::start(&data, &dir.join("postgres.log"));
        TlsPostgres {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            port,
            data,
        }
    }

    /// The server's `postgres` database on `host`, with `params` (`sslmode=...&...`).
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = cluster::stop(&self.data, "immediate");
    }
}
