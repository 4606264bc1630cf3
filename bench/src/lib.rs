//! What the `campaign-bench` binary and its examples share, and the binary's benchmark itself.
//!
//! - `args`: the binary's command line, and the arguments of each shape of the fan-out matrix;
//! - `phases`: one run of the benchmark, a file per phase, and its report;
//! - `workload`: the campaigns the benchmarks produce, the subscribers and notifications of a run;
//! - `baseline`: the plain Python pipeline run beside the service;
//! - `chart`: the fan-out matrix against the baseline as an SVG chart;
//! - `measure`: CPU time, resident memory and histogram quantiles;
//! - `cpu`: where the machine's CPU goes during a phase: the broker, Postgres, this process's threads;
//! - `seen`: when each notification first reached the output topic;
//! - `setup`: a database and topics of a benchmark's own, and the service's config in it.

pub mod args;
pub mod baseline;
pub mod chart;
pub mod cpu;
pub mod measure;
pub mod phases;
pub mod seen;
pub mod setup;
pub mod workload;
