//! The service binary as a process, started with a config file as an operator would: waited for
//! until ready or until it exits, signalled, killed, and read from outside (its log, `/metrics`,
//! its memory).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Fixture;

/// Waits up to 30 s for something (`what`, logging to `log`) to listen on `port`.
pub fn wait_listening(port: u16, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in 30s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over plain HTTP/1.0; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The service binary, started with a config file as an operator would.
pub struct Service {
    child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn start(fixture: &Fixture, extra_config: &str) -> Service {
        Service::start_numbered(fixture, extra_config, 0)
    }

    pub fn start_numbered(fixture: &Fixture, extra_config: &str, n: usize) -> Service {
        let mut service = Service::spawn(fixture, extra_config, n);
        service.wait_ready();
        service
    }

    /// Starts the service without waiting for it to be ready.
    pub fn spawn(fixture: &Fixture, extra_config: &str, n: usize) -> Service {
        Service::spawn_with_env(fixture, extra_config, n, &[])
    }

    /// The same, with `CAMPAIGN_NOTIFIER__*` overrides (for keys of sections the fixture's
    /// config already has).
    pub fn spawn_with_env(
        fixture: &Fixture,
        extra_config: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> Service {
        let http_port = free_port();
        let config = fixture.dir.join(format!("config-{n}.toml"));
        std::fs::write(&config, fixture.config(http_port, extra_config)).expect("write config");
        let log = fixture.dir.join(format!("service-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the service");
        Service {
            child,
            http_port,
            log,
        }
    }

    /// Starts instance `n` with its wall clock `skew_secs` ahead of the host's (behind, if
    /// negative): `tests/it/common/skewed_clock.c`, built with the system's C compiler, preloaded.
    pub fn spawn_with_skewed_clock(
        fixture: &Fixture,
        extra_config: &str,
        n: usize,
        skew_secs: i64,
    ) -> Service {
        let shim = fixture.dir.join("skewed_clock.so");
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/common/skewed_clock.c"
        );
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(source)
            .arg("-ldl")
            .status()
            .expect("run cc");
        assert!(built.success(), "cannot build {source}");
        let skew = skew_secs.to_string();
        let preload = shim.to_string_lossy().into_owned();
        Service::spawn_with_env(
            fixture,
            extra_config,
            n,
            &[("LD_PRELOAD", &preload), ("CN_TEST_CLOCK_SKEW_SECS", &skew)],
        )
    }

    /// Starts the service and waits for it to exit by itself (for start-up failures); fails the
    /// test if it is still running after 60 s (a start-up that hangs is what such tests guard
    /// against).
    pub fn run_to_exit(fixture: &Fixture, extra_config: &str) -> (ExitStatus, String) {
        let config = fixture.dir.join("config-exit.toml");
        std::fs::write(&config, fixture.config(free_port(), extra_config)).expect("write config");
        let log = fixture.dir.join("service-exit.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("run the service");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the service") {
                return (status, std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "still running after 60 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the service has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A line of `/proc/PID/status` in MiB: `VmRSS` (resident now) or `VmHWM` (the peak).
    pub fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the service's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib / 1024.0
    }

    /// SIGKILL: no drain, no commit, nothing flushed.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many partitions of the input topic the service was last assigned, from its log
    /// (`None` before its first assignment).
    pub fn assigned_partitions(&self) -> Option<usize> {
        let log = self.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("kafka reader: assigned"))?;
        Some(match line.contains("no partitions") {
            true => 0,
            false => line.matches(", ").count() + 1,
        })
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "service exited with {status} before ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.http_port, "/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "service not ready in 60s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Sum of every series of a metric (all label values).
    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics(), name)
    }

    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        let series = format!("{name}{{{labels}}}");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `campaigns_processed_total` reaches `n` (every outcome counts).
    pub fn wait_processed(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.metric("campaign_notifier_campaigns_processed_total") as u64;
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {n} campaigns processed in {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then the exit status (waits up to 60 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60), "after SIGTERM")
    }

    /// Waits for the service to exit; fails the test if it is still running after `within`
    /// (`when` says after what, in the failure).
    pub fn wait_exit(&mut self, within: Duration, when: &str) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service still running {within:?} {when}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
