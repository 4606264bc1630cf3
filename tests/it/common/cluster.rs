//! A Postgres server of a test's own, on its own port and data directory, for what the shared
//! server must never be made into (TLS, `wal_level = logical`): the server programs run as the
//! `postgres` user, a cluster made and started, stopped and started again; and
//! [`LogicalPostgres`], a server whose WAL carries logical decoding.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port;

/// A directory of this run for `name` (`CN_TEST_RUN_ID` keeps runs apart).
pub(crate) fn run_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "cn-test-{}-{name}",
        std::env::var("CN_TEST_RUN_ID").expect("CN_TEST_RUN_ID")
    ))
}

/// Runs a Postgres server program as the `postgres` user when the tests run as root (initdb
/// refuses root), as the current user otherwise.
pub(crate) fn as_postgres(program: &str, args: &[&str]) -> Output {
    let bin = Path::new("/usr/lib/postgresql")
        .read_dir()
        .ok()
        .and_then(|versions| versions.flatten().map(|v| v.path()).max())
        .map(|v| v.join("bin").join(program))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(program));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    let mut command = match root {
        Ok(true) => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        }
        _ => Command::new(&bin),
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Makes a cluster in `dir`/data (everything in `dir` handed to the user the server runs as) and
/// appends `conf` to its postgresql.conf. Returns the data directory.
pub(crate) fn init(dir: &Path, conf: &str) -> PathBuf {
    let data = dir.join("data");
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status();
    let data_arg = data.display().to_string();
    let out = as_postgres(
        "initdb",
        &[
            "-D",
            &data_arg,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("postgresql.conf");
    std::io::Write::write_all(&mut file, conf.as_bytes()).expect("write postgresql.conf");
    data
}

/// Starts the cluster of `data`, logging to `log`, and waits until it takes connections.
pub(crate) fn start(data: &Path, log: &Path) {
    let (data, log) = (data.display().to_string(), log.display().to_string());
    let out = as_postgres("pg_ctl", &["-D", &data, "-l", &log, "-w", "start"]);
    assert!(
        out.status.success(),
        "pg_ctl start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Stops the cluster of `data`: `mode` is pg_ctl's (`fast` for a clean stop, `immediate` for a
/// crash).
pub(crate) fn stop(data: &Path, mode: &str) -> Output {
    let data = data.display().to_string();
    as_postgres("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])
}

/// A Postgres with `wal_level = logical` and room for replication slots, which the shared server
/// (wal_level replica) is never reconfigured into. It can be stopped and started again on the
/// same data, as a server restart is.
pub struct LogicalPostgres {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    running: bool,
}

impl LogicalPostgres {
    pub fn start(dir: PathBuf) -> LogicalPostgres {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("postgres dir");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             fsync = off\nwal_level = logical\nmax_replication_slots = 10\n\
             max_wal_senders = 10\n",
            dir = dir.display()
        );
        let data = init(&dir, &conf);
        let mut server = LogicalPostgres {
            port,
            data,
            log: dir.join("postgres.log"),
            running: false,
        };
        server.start_again();
        server
    }

    /// The server's `postgres` database, as its superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A clean stop (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        let out = stop(&self.data, "fast");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// `ALTER SYSTEM SET {setting}`, then the server restarted for it (a setting read only at
    /// start).
    pub async fn set_and_restart(&mut self, setting: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the logical server");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .expect("alter system");
        drop(client);
        self.stop();
        self.start_again();
    }

    /// Starts the server again on the same data directory and port.
    pub fn start_again(&mut self) {
        start(&self.data, &self.log);
        self.running = true;
    }
}

impl Drop for LogicalPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = stop(&self.data, "immediate");
        }
    }
}
