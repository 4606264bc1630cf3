//! (e): the workload of (d) again, with new campaign ids, while the subscriber cache reloads back
//! to back.

use std::time::Instant;

use campaign_actors::campaign::Campaign;

use super::pipeline::Service;
use super::{progress, Bench};
use crate::setup::BenchResult;
use crate::workload::{campaign, restaurant_id};

/// (e): seconds, and the cache reloads completed meanwhile with their seconds in all.
pub(super) struct Reloads {
    pub(super) secs: f64,
    pub(super) reloads: u64,
    pub(super) reload_secs: f64,
}

impl Bench<'_> {
    /// (e): the same workload as (d) again (new campaign ids) while the cache reloads back to
    /// back.
    pub(super) async fn reloads(&self, service: &mut Service) -> BenchResult<Reloads> {
        let (args, now) = (self.args, self.now);
        progress("(e) pipeline while the cache reloads");
        let again: Vec<Campaign> = (0..args.campaigns)
            .map(|i| campaign(1_000_000 + i, &restaurant_id(i % args.restaurants), now))
            .collect();
        let refreshes = &service.metrics.cache_refresh_duration;
        let (reloads_before, reload_secs_before) =
            (refreshes.get_sample_count(), refreshes.get_sample_sum());
        let started = Instant::now();
        // A request while a load runs is ignored, so asking on every tick reloads back to back.
        service
            .run(&again, "(e)", |pipeline| pipeline.refresh_cache())
            .await?;
        let e = started.elapsed().as_secs_f64();
        let metrics = &service.metrics;
        let reloads = metrics.cache_refresh_duration.get_sample_count() - reloads_before;
        let reload_secs = metrics.cache_refresh_duration.get_sample_sum() - reload_secs_before;
        Ok(Reloads {
            secs: e,
            reloads,
            reload_secs,
        })
    }
}
