//! The JSON line of every figure of a run, section by section: the workload, the throughputs of
//! the ceilings and the pipeline, the latencies and their floors, the baseline with
//! `--baseline-python`, and the backlog, reload and cache phases unless `pipeline_only`.

use serde_json::{json, Map, Value};

use super::floor::FloorTimes;
use super::{Figures, Rest};
use crate::args::Args;
use crate::baseline::BaselineRun;
use crate::measure::quantile;

/// The JSON line of every figure.
pub(super) fn report(args: &Args, f: &Figures) -> Value {
    let s = Scale {
        n: f.w.notifications as f64,
    };
    let mut report = Map::new();
    extend(&mut report, workload(args, f));
    extend(&mut report, throughput(&s, f));
    extend(&mut report, latency(args, f));
    if let Some(b) = &f.baseline {
        extend(&mut report, baseline(&s, f, b));
    }
    if let Some(rest) = &f.rest {
        extend(&mut report, backlog_reloads_and_cache(args, &s, f, rest));
    }
    Value::Object(report)
}

fn extend(report: &mut Map<String, Value>, more: Value) {
    if let Value::Object(more) = more {
        report.extend(more);
    }
}

/// Figures per notification of the workload.
struct Scale {
    n: f64,
}

impl Scale {
    /// Notifications per second, in `secs` seconds.
    fn per_s(&self, secs: f64) -> f64 {
        (self.n / secs).round()
    }

    /// Seconds per million notifications, `secs` seconds in all.
    fn per_million(&self, secs: f64) -> f64 {
        round(secs / self.n * 1e6, 2)
    }
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / 1048576.0, 1)
}

/// The shape, the machine and the workload.
fn workload(args: &Args, f: &Figures) -> Value {
    json!({
        "shape": args.shape(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "restaurants": args.restaurants,
        "pairs": f.pairs,
        "largest_restaurant": f.sizes.first().copied().unwrap_or(0),
        "campaigns": f.w.campaigns.len(),
        "notifications": f.w.notifications,
        "per_client_max": args.per_client_max,
    })
}

/// (a), (b), (c) and (d): rates and CPU.
fn throughput(s: &Scale, f: &Figures) -> Value {
    let (c, d) = (&f.ceilings, &f.d);
    json!({
        "a_raw_kafka_per_s": s.per_s(c.a),
        "a_raw_kafka_cpu_seconds_per_million": s.per_million(c.a_cpu),
        "b_raw_copy_per_s": s.per_s(c.b),
        "c_dual_ceiling_per_s": s.per_s(c.c),
        "c_cpu_seconds_per_million": {
            "bench": s.per_million(c.c_cpu),
            "broker": s.per_million(c.c_others.0),
            "postgres": s.per_million(c.c_others.1),
        },
        "d_pipeline_per_s": s.per_s(d.secs),
        "d_capped": d.capped,
        "d_over_c": round(c.c / d.secs, 3),
        "d_seconds": round(d.secs, 3),
        "d_cpu_seconds_per_million": {
            "service": s.per_million(d.cpu),
            "broker": s.per_million(d.others.0),
            "postgres": s.per_million(d.others.1),
        },
        "service_cpu_seconds_per_million": s.per_million(d.cpu),
        "service_cpu_over_raw_kafka_cpu": round(d.cpu / c.a_cpu, 2),
    })
}

/// The latency phase next to the floors of the two sinks and of the input hop.
fn latency(args: &Args, f: &Figures) -> Value {
    let floor_total: Vec<f64> = f.floor.iter().map(|t| t.total).collect();
    let floor_max = |part: fn(&FloorTimes) -> f64| f.floor.iter().map(part).fold(0.0, f64::max);
    let floor_p99 = exact_quantile(&floor_total, 0.99);
    let hop_p99 = exact_quantile(&f.hop, 0.99);
    let latency_p99 = quantile(&f.latency.phase, 0.99);
    json!({
        "latency_campaigns": f.latency.total_latency,
        "latency_fanout": args.latency_fanout,
        "latency_rate_per_s": f.latency.rate,
        "latency_p50_seconds": round(quantile(&f.latency.phase, 0.5), 4),
        "latency_p99_seconds": round(latency_p99, 4),
        "latency_max_bucket_le_seconds": max_bound(&f.latency.phase),
        "sinks_latency_floor_p50_seconds": round(exact_quantile(&floor_total, 0.5), 4),
        "sinks_latency_floor_p99_seconds": round(floor_p99, 4),
        "sinks_latency_floor_max_seconds": round(exact_quantile(&floor_total, 1.0), 4),
        "sinks_latency_floor_postgres_max_seconds": round(floor_max(|t| t.postgres), 4),
        "sinks_latency_floor_kafka_max_seconds": round(floor_max(|t| t.kafka), 4),
        "latency_p99_over_floor_p99_ms": round((latency_p99 - floor_p99) * 1000.0, 1),
        "input_hop_floor_p50_seconds": round(exact_quantile(&f.hop, 0.5), 4),
        "input_hop_floor_p99_seconds": round(hop_p99, 4),
        "input_hop_floor_max_seconds": round(exact_quantile(&f.hop, 1.0), 4),
        "latency_p99_over_both_floors_p99_ms": round((latency_p99 - floor_p99 - hop_p99) * 1000.0, 1),
    })
}

/// The plain Python pipeline next to (d).
fn baseline(s: &Scale, f: &Figures, b: &BaselineRun) -> Value {
    let service_total = f.d.cpu + f.d.others.0 + f.d.others.1;
    let baseline_total = b.cpu + b.others.0 + b.others.1;
    json!({
        "baseline_per_s": s.per_s(b.secs),
        "baseline_seconds": round(b.secs, 3),
        "baseline_cpu_seconds_per_million": {
            "script": s.per_million(b.cpu),
            "broker": s.per_million(b.others.0),
            "postgres": s.per_million(b.others.1),
        },
        "service_rate_over_baseline": round(b.secs / f.d.secs, 2),
        "baseline_cpu_over_service_cpu": round(b.cpu / f.d.cpu, 2),
        "system_cpu_seconds_per_million": {
            "service": s.per_million(service_total),
            "baseline": s.per_million(baseline_total),
        },
        "baseline_system_cpu_over_service_system_cpu": round(baseline_total / service_total, 2),
    })
}

/// The backlogs, (e), and the cache's load.
fn backlog_reloads_and_cache(args: &Args, s: &Scale, f: &Figures, rest: &Rest) -> Value {
    let (rss_1x_start, rss_1x_peak, rate_1x) = rest.backlog_peaks[0];
    let (rss_10x_start, rss_10x_peak, rate_10x) = rest.backlog_peaks[1];
    let e = &rest.e;
    json!({
        "backlog_campaigns": [args.backlog_campaigns, args.backlog_campaigns * 10],
        "backlog_rss_start_mib": [mib(rss_1x_start), mib(rss_10x_start)],
        "backlog_rss_peak_mib": [mib(rss_1x_peak), mib(rss_10x_peak)],
        "backlog_notifications_per_s": [rate_1x, rate_10x],
        "e_pipeline_while_cache_reloads_per_s": s.per_s(e.secs),
        "e_over_d": round(f.d.secs / e.secs, 3),
        "e_cache_reloads": e.reloads,
        "e_cache_reload_seconds_mean": round(e.reload_secs / e.reloads.max(1) as f64, 3),
        "cache_pairs": f.cache.snapshot.pairs(),
        "cache_load_seconds": round(f.cache.load_secs, 3),
        "cache_resident_bytes_per_pair": f.cache.cache_bytes_per_pair.round(),
    })
}

/// Upper bound of the highest bucket that holds an observation.
fn max_bound(buckets: &[(f64, u64)]) -> f64 {
    let mut previous = 0;
    let mut highest = 0.0;
    for &(bound, count) in buckets {
        if count > previous {
            highest = bound;
        }
        previous = count;
    }
    highest
}

/// The q-quantile of exact observations (nearest rank); q = 1 is the maximum.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
