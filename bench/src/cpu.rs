//! Where the machine's CPU goes during a phase of a benchmark, read from /proc: the broker, the
//! Postgres cluster's backends and its walsenders, and this process thread by thread (the
//! service's actors, librdkafka's threads, the benchmark's own). On a machine where all of them
//! share the cores, a phase's rate is set by who gets them; this says who did.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{json, Value};

use crate::measure::round;

/// Whose CPU a process or thread counts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Broker,
    Postgres,
    Walsender,
    /// A thread of this process, by its name with the digits left out.
    Thread(String),
}

/// The processes to look at.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The Postgres cluster's postmaster: it and its children are `postgres`. Without it, every
    /// process named `postgres` is.
    pub postmaster: Option<u32>,
}

/// CPU seconds used so far, by process or thread, as of a moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// (pid or tid, owner) -> CPU seconds.
    used: HashMap<(u32, Owner), f64>,
}

impl Watched {
    /// Reads the postmaster's pid from the data directory the server reports.
    pub async fn of_server(db: &tokio_postgres::Client) -> Watched {
        let dir = match db.query_one("SHOW data_directory", &[]).await {
            Ok(row) => row.get::<_, String>(0),
            Err(_) => return Watched::default(),
        };
        let postmaster = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok());
        Watched { postmaster }
    }

    pub fn sample(&self) -> Sample {
        let mut used = HashMap::new();
        for (pid, stat) in stats("/proc") {
            let Some(owner) = self.owner_of(pid, &stat) else {
                continue;
            };
            used.insert((pid, owner), stat.cpu_seconds);
        }
        for (tid, stat) in stats("/proc/self/task") {
            let name: String = stat.name.chars().filter(|c| !c.is_ascii_digit()).collect();
            used.insert((tid, Owner::Thread(name)), stat.cpu_seconds);
        }
        Sample {
            at: Instant::now(),
            used,
        }
    }

    fn owner_of(&self, pid: u32, stat: &Stat) -> Option<Owner> {
        if stat.name == "tansu" {
            return Some(Owner::Broker);
        }
        let of_cluster = match self.postmaster {
            Some(p) => pid == p || stat.parent == p,
            None => stat.name == "postgres",
        };
        if !of_cluster {
            return None;
        }
        let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        match String::from_utf8_lossy(&title).contains("walsender") {
            true => Some(Owner::Walsender),
            false => Some(Owner::Postgres),
        }
    }
}

impl Sample {
    /// The cores each owner used on average from `self` to `end`, as JSON: `broker`, `postgres`,
    /// `walsender`, `this_process` and its `threads` (those that used a hundredth of a core or
    /// more). A process that started in between counts whole; one that ended is missed.
    pub fn cores_until(&self, end: &Sample) -> Value {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mut by_owner: BTreeMap<Owner, f64> = BTreeMap::new();
        for (key, used) in &end.used {
            let before = self.used.get(key).copied().unwrap_or(0.0);
            *by_owner.entry(key.1.clone()).or_default() += (used - before).max(0.0);
        }
        let cores = |o: &Owner| round(by_owner.get(o).copied().unwrap_or(0.0) / secs, 3);
        let mut threads: Vec<(String, f64)> = (by_owner.iter())
            .filter_map(|(o, used)| match o {
                Owner::Thread(name) => Some((name.clone(), used / secs)),
                _ => None,
            })
            .collect();
        let this_process: f64 = threads.iter().map(|t| t.1).sum();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let threads: serde_json::Map<String, Value> = (threads.into_iter())
            .filter(|t| t.1 >= 0.01)
            .map(|(name, c)| (name, json!(round(c, 3))))
            .collect();
        json!({
            "broker": cores(&Owner::Broker),
            "postgres": cores(&Owner::Postgres),
            "walsender": cores(&Owner::Walsender),
            "this_process": round(this_process, 3),
            "threads": threads,
        })
    }
}

/// The fields of /proc/PID/stat used here.
struct Stat {
    name: String,
    parent: u32,
    cpu_seconds: f64,
}

/// (pid, stat) of each numbered entry of `dir` (/proc, or a process's task/).
fn stats(dir: &str) -> Vec<(u32, Stat)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// A /proc/PID/stat line: the name is in parentheses and may hold spaces and parentheses.
fn parse_stat(text: &str) -> Option<Stat> {
    let (open, close) = (text.find('(')?, text.rfind(") ")?);
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(Stat {
        name: text[open + 1..close].to_string(),
        // After the name: state, ppid, ... utime (the 12th), stime (the 13th).
        parent: field(1)? as u32,
        cpu_seconds: (field(11)? + field(12)?) / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (rdk:broker (1)) S 17 4242 17 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(stat.name, "rdk:broker (1)");
        assert_eq!(stat.parent, 17);
        assert!(
            (stat.cpu_seconds - 3.0).abs() < 1e-9,
            "{}",
            stat.cpu_seconds
        );
    }

    #[test]
    fn this_process_and_its_threads_are_seen_using_cpu() {
        let watched = Watched::default();
        let start = watched.sample();
        let spin = std::thread::Builder::new()
            .name("spinner7".into())
            .spawn(|| {
                let until = Instant::now() + std::time::Duration::from_millis(300);
                let mut x = 0u64;
                while Instant::now() < until {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
                x
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(400));
        let end = watched.sample();
        spin.join().expect("join");
        let cores = start.cores_until(&end);
        let spinner = cores["threads"]["spinner"].as_f64().unwrap_or(0.0);
        assert!(spinner > 0.3, "{cores}");
        assert!(cores["this_process"].as_f64().unwrap_or(0.0) >= spinner);
    }
}
