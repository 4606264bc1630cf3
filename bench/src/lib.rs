//! What the `campaign-bench` binary and its examples share.

pub mod measure;
pub mod setup;
