//! A Tansu broker of a test's own, for the tests that stop the broker and start it again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{free_port, wait_listening};

/// A Tansu broker of the test's own, on a free port, with sqlite storage in `dir`: it can be
/// stopped and started again with its data.
pub struct OwnBroker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl OwnBroker {
    pub fn start(dir: PathBuf) -> OwnBroker {
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut broker = OwnBroker {
            child: None,
            port: free_port(),
            dir,
        };
        broker.resume();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn resume(&mut self) {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_listening(self.port, "tansu", &self.dir.join("tansu.log"));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
