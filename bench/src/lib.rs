//! What the `campaign-bench` binary and its examples share.

pub mod baseline;
pub mod chart;
pub mod measure;
pub mod setup;
pub mod workload;
