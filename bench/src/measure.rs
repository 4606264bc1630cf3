//! CPU time and resident memory, read from /proc; quantiles of the service's histograms.

use prometheus::core::Collector;

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    proc_cpu_seconds("self")
}

/// User + system CPU seconds of process `pid` so far (0 once it is gone).
pub fn pid_cpu_seconds(pid: u32) -> f64 {
    proc_cpu_seconds(&pid.to_string())
}

fn proc_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or_default();
    stat_cpu_seconds(after)
}

/// User + system CPU seconds so far of every process named `tansu` (the broker) and `postgres`
/// (the server and its backends), read from /proc: where the machine's CPU goes besides the
/// service. Backends that exited in between are missed, so these are lower bounds.
pub fn others_cpu_seconds() -> (f64, f64) {
    let (mut broker, mut postgres) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0.0, 0.0);
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(") ")) else {
            continue;
        };
        let secs = stat_cpu_seconds(&stat[close + 2..]);
        match &stat[open + 1..close] {
            "tansu" => broker += secs,
            "postgres" => postgres += secs,
            _ => {}
        }
    }
    (broker, postgres)
}

/// Resident memory of this process in bytes.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// User + system CPU seconds from the fields of a /proc/PID/stat line after the command name.
fn stat_cpu_seconds(after_name: &str) -> f64 {
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// (upper bound, cumulative count) of a histogram's buckets; +Inf last.
pub fn histogram_buckets(histogram: &prometheus::Histogram) -> Vec<(f64, u64)> {
    let h = histogram.collect();
    let Some(m) = h.first().and_then(|f| f.get_metric().first()) else {
        return Vec::new();
    };
    let hist = m.get_histogram();
    let mut out: Vec<(f64, u64)> = hist
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    out.push((f64::INFINITY, hist.get_sample_count()));
    out
}

/// The q-quantile of a cumulative histogram, interpolated linearly within its bucket as
/// Prometheus' histogram_quantile does.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let in_bucket = (count - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * into;
        }
        lower = (bound, count);
    }
    lower.0
}

/// Campaigns completed so far, read from the counters directly: rendering the whole exposition
/// this often would show up in the CPU figure.
pub fn processed(metrics: &campaign_actors::Metrics) -> u64 {
    metrics
        .campaigns_processed
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Notifications `sink` (`kafka` or `postgres`) has confirmed so far.
pub fn written(metrics: &campaign_actors::Metrics, sink: &str) -> u64 {
    metrics
        .notifications_written
        .with_label_values(&[sink])
        .get()
}

/// The `q` quantile of `values` (sorted here), the value at rank ceil(q * n); NaN when empty.
pub fn exact_quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

/// `v` rounded to `places` decimals.
pub fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}
