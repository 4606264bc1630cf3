//! The baseline: the plain Python pipeline of `bench/baseline/pipeline.py`, run on the same
//! broker, Postgres and workload as the service, so that the benchmark can say by how much the
//! service is faster and cheaper than what a data engineer writes in an afternoon.
//!
//! The script runs in a process of its own; its CPU is read from /proc while it runs, from the
//! moment its campaigns start to be produced (its dict of subscribers is loaded and its
//! partitions assigned by then, as the service's cache is loaded and its reader assigned) to the
//! moment it says every notification is in both sinks.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use tokio_postgres::Client;

use crate::measure::{others_cpu_seconds, pid_cpu_seconds};
use crate::setup::{err, BenchResult};

/// The script, beside this crate's sources.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/baseline/pipeline.py");

/// Where the baseline reads and writes in a run.
pub struct BaselineTarget<'a> {
    pub python: &'a str,
    pub brokers: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub group: &'a str,
    pub db_url: &'a str,
    pub table: &'a str,
}

/// Seconds from the first campaign produced to every notification in both sinks, and the CPU
/// seconds the script, the broker and Postgres spent meanwhile.
pub struct BaselineRun {
    pub secs: f64,
    pub cpu: f64,
    pub others: (f64, f64),
    pub written: u64,
}

/// The brief's `subscribers_feedback` (its DDL, no unique key), under another name: what the
/// script writes into.
pub async fn create_table(db: &Client, table: &str) -> BenchResult<()> {
    let ddl = campaign_actors::contract::SUBSCRIBERS_FEEDBACK_DDL
        .replace("public.subscribers_feedback", table)
        .replace("CONSTRAINT id_pk", &format!("CONSTRAINT {table}_pk"));
    db.batch_execute(&ddl).await.map_err(err("baseline table"))
}

/// The running script and the lines it prints.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Script {
    fn start(t: &BaselineTarget<'_>, expect: usize) -> BenchResult<Script> {
        let mut child = Command::new(t.python)
            .arg(SCRIPT)
            .args([
                "--brokers",
                t.brokers,
                "--input",
                t.input,
                "--output",
                t.output,
            ])
            .args([
                "--group",
                t.group,
                "--postgres",
                t.db_url,
                "--table",
                t.table,
            ])
            .args(["--expect", &expect.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("baseline: cannot run {}: {e}", t.python))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("baseline: no standard output")?;
        Ok(Script {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line the script prints; an error once it has exited.
    fn line(&mut self) -> BenchResult<String> {
        match self.lines.next() {
            Some(line) => line.map_err(err("baseline output")),
            None => {
                let status = self.child.wait().map_err(err("baseline"))?;
                Err(format!("the baseline script exited with {status}"))
            }
        }
    }
}

impl Drop for Script {
    /// Closing its standard input lets the script close its consumer and exit; one that has not
    /// within five seconds is killed.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the script over `expect` notifications; `produce` starts the producer of its campaigns
/// (a child process, as for the service) and is waited for at the end.
pub fn run(
    target: &BaselineTarget<'_>,
    expect: usize,
    produce: impl FnOnce() -> BenchResult<Child>,
) -> BenchResult<BaselineRun> {
    let mut script = Script::start(target, expect)?;
    let ready = script.line()?;
    if ready != "ready" {
        return Err(format!("baseline: expected `ready`, got {ready:?}"));
    }
    let pid = script.child.id();
    let others_before = others_cpu_seconds();
    let cpu_before = pid_cpu_seconds(pid);
    let started = Instant::now();
    let mut producer = produce()?;
    let done = script.line();
    let secs = started.elapsed().as_secs_f64();
    let cpu = pid_cpu_seconds(pid) - cpu_before;
    let others = others_cpu_seconds();
    let status = producer.wait().map_err(err("campaign producer"))?;
    let done = done?;
    if !status.success() {
        return Err(format!("the campaign producer exited with {status}"));
    }
    let written = done
        .strip_prefix("done ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("baseline: expected `done N`, got {done:?}"))?;
    Ok(BaselineRun {
        secs,
        cpu,
        others: (others.0 - others_before.0, others.1 - others_before.1),
        written,
    })
}
