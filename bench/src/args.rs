//! The command line of `campaign-bench`, and the arguments of each shape of the fan-out matrix.

use clap::Parser;

// No doc comment on `Args`: clap would print it as the long description of `--help`.
#[derive(Parser, Debug)]
#[command(about = "Throughput of campaign-notifier next to the ceilings of its sinks")]
pub struct Args {
    /// Kafka-protocol brokers (scripts/bench.sh starts one).
    #[arg(long)]
    pub brokers: String,
    /// Postgres server; the benchmark works in a database of its own, dropped at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// Restaurants with subscribers.
    #[arg(long, default_value_t = 2_000)]
    pub restaurants: usize,
    /// (restaurant, client) pairs in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub pairs: usize,
    /// Campaigns, one per restaurant in turn: with campaigns = restaurants every pair gets one
    /// notification.
    #[arg(long, default_value_t = 2_000)]
    pub campaigns: usize,
    /// Zipf exponent of restaurant popularity: restaurant r has a share proportional to
    /// 1 / (r + 1)^skew.
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Latency phase: campaigns per second, each to a restaurant with `latency_fanout`
    /// subscribers, for `latency_secs` seconds.
    #[arg(long, default_value_t = 100)]
    pub latency_rate: u32,
    #[arg(long, default_value_t = 100)]
    pub latency_fanout: usize,
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u32,
    /// Backlog phase: campaigns (fan-out `latency_fanout`) produced at once, then ten times as
    /// many; resident memory is sampled while each drains.
    #[arg(long, default_value_t = 500)]
    pub backlog_campaigns: usize,
    /// Extra (restaurant, client) pairs of restaurants without campaigns, so that the cache is
    /// measured at this size and the refresh phase reloads a cache this large.
    #[arg(long, default_value_t = 10_000_000)]
    pub cache_pairs: usize,
    /// Extra librdkafka producer property KEY=VALUE, for the ceilings and the pipeline alike
    /// (repeatable).
    #[arg(long = "producer-property", value_parser = parse_property)]
    pub producer_properties: Vec<(String, String)>,
    /// Extra librdkafka consumer property KEY=VALUE for the service's reader (repeatable).
    #[arg(long = "consumer-property", value_parser = parse_property)]
    pub consumer_properties: Vec<(String, String)>,
    /// Every restaurant with exactly this many subscribers instead of the Zipf mix: `--pairs`
    /// rounded down to a multiple of it, one campaign per restaurant, and the latency phases at
    /// this fan-out.
    #[arg(long)]
    pub fanout: Option<usize>,
    /// The fan-out matrix: for each shape in turn (a fan-out, `zipf` for the mix of
    /// `--restaurants` and `--skew`, or `zipf-capN`: the same mix with `[limits] per_client_max =
    /// N` a day), about `--notifications` notifications on fresh topics and tables, the ceilings,
    /// the pipeline and the latency phases only; one JSON line per shape.
    /// `--matrix` alone: 1,10,100,1000,zipf,zipf-cap3.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, num_args = 0..=1,
          default_missing_value = "1,10,100,1000,zipf,zipf-cap3")]
    pub matrix: Vec<Shape>,
    /// The service's `[limits] per_client_max` (a day's window); 0: no cap. With `--campaigns`
    /// a multiple of `--restaurants`, each client gets that many notifications, and a cap below it
    /// bites.
    #[arg(long, default_value_t = 0)]
    pub per_client_max: u32,
    /// Notifications per shape of `--matrix`.
    #[arg(long, default_value_t = 300_000)]
    pub notifications: usize,
    /// Skips the backlog, reload and cache phases (set for each shape of `--matrix`).
    #[arg(skip)]
    pub pipeline_only: bool,
    /// Also run the plain Python pipeline of bench/baseline/pipeline.py with this interpreter (it
    /// needs confluent-kafka and psycopg; `scripts/bench.sh --baseline` installs them in a
    /// virtual environment of its own) on the same broker, Postgres and workload as (d), and
    /// report its rate and CPU next to the service's.
    #[arg(long)]
    pub baseline_python: Option<String>,
    /// With `--baseline-python`: write an SVG chart of every shape's rate and CPU, service
    /// beside baseline, to this file at the end.
    #[arg(long)]
    pub chart: Option<std::path::PathBuf>,
    /// Internal: produce the `--campaigns` campaigns of (d), made at `--now`, to this topic and
    /// exit. (d) runs this in a child process, so that producing the input is not counted as the
    /// service's CPU.
    #[arg(long, hide = true)]
    pub produce_campaigns: Option<String>,
    #[arg(long, hide = true)]
    pub now: Option<i64>,
}

/// One shape of the fan-out matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Every restaurant with this many subscribers.
    Fanout(usize),
    /// Restaurant popularity after Zipf.
    Zipf,
    /// The same, with the service's `[limits] per_client_max` at this (a day's window).
    ZipfCapped(u32),
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    match s {
        "zipf" => Ok(Shape::Zipf),
        capped if capped.starts_with("zipf-cap") => match capped["zipf-cap".len()..].parse() {
            Ok(max) if max > 0 => Ok(Shape::ZipfCapped(max)),
            _ => Err(format!("{s}: expected zipf-capN, N at least 1")),
        },
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Shape::Fanout(n)),
            _ => Err(format!("{s}: expected a fan-out of at least 1 or `zipf`")),
        },
    }
}

impl Args {
    /// The arguments of one shape of the matrix: `notifications` in all, nothing but the
    /// pipeline's phases.
    pub fn for_shape(&self, shape: Shape) -> Args {
        let n = self.notifications.max(1);
        let mut args = Args {
            matrix: Vec::new(),
            pipeline_only: true,
            cache_pairs: 0,
            pairs: n,
            producer_properties: self.producer_properties.clone(),
            consumer_properties: self.consumer_properties.clone(),
            brokers: self.brokers.clone(),
            postgres_url: self.postgres_url.clone(),
            baseline_python: self.baseline_python.clone(),
            chart: None,
            produce_campaigns: None,
            ..*self
        };
        match shape {
            Shape::Fanout(f) => {
                args.fanout = Some(f);
                args.latency_fanout = f;
            }
            Shape::Zipf => args.fanout = None,
            Shape::ZipfCapped(max) => {
                args.fanout = None;
                args.per_client_max = max;
            }
        }
        args.normalize();
        args
    }

    /// With `--fanout`: restaurants and campaigns follow from the pairs.
    pub fn normalize(&mut self) {
        if let Some(f) = self.fanout {
            let f = f.max(1);
            self.fanout = Some(f);
            self.restaurants = (self.pairs / f).max(1);
            self.pairs = self.restaurants * f;
            self.campaigns = self.restaurants;
        }
    }

    /// The shape's name in the report.
    pub fn shape(&self) -> String {
        let shape = match self.fanout {
            Some(f) => format!("fanout {f}"),
            None => format!("zipf {}", self.skew),
        };
        match self.per_client_max {
            0 => shape,
            max => format!("{shape}, cap {max} a day"),
        }
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_runs_the_zipf_mix_with_and_without_a_cap_of_3_a_day() {
        let args = Args::try_parse_from(["campaign-bench", "--brokers", "b", "--matrix"])
            .unwrap_or_else(|e| panic!("{e}"));
        let shapes: Vec<String> = args
            .matrix
            .iter()
            .map(|s| args.for_shape(*s).shape())
            .collect();
        assert_eq!(
            shapes,
            [
                "fanout 1",
                "fanout 10",
                "fanout 100",
                "fanout 1000",
                "zipf 1",
                "zipf 1, cap 3 a day"
            ]
        );
        let capped = args.for_shape(Shape::ZipfCapped(3));
        let plain = args.for_shape(Shape::Zipf);
        assert_eq!((capped.per_client_max, plain.per_client_max), (3, 0));
        assert_eq!(
            (capped.pairs, capped.campaigns, capped.restaurants),
            (plain.pairs, plain.campaigns, plain.restaurants),
            "the same workload"
        );
        assert!(parse_shape("zipf-cap0").is_err());
        assert!(parse_shape("zipf-capx").is_err());
    }
}
