//! The baseline phase: the plain Python pipeline of `crate::baseline` over the campaigns of (d),
//! with `--baseline-python`.

use super::{progress, settle, Bench};
use crate::baseline::{self, BaselineRun, BaselineTarget};
use crate::setup::{err, BenchResult};
use crate::workload::Workload;

impl Bench<'_> {
    /// The baseline: the plain Python pipeline over the campaigns of (d), produced the same way
    /// to a topic of its own, writing to a topic and a table of its own.
    pub(super) async fn baseline(&self, python: &str, w: &Workload) -> BenchResult<BaselineRun> {
        progress("baseline: the plain Python pipeline");
        let table = "baseline_feedback";
        baseline::create_table(&self.db, table).await?;
        let (input, output) = (self.topic("py-in"), self.topic("py-out"));
        let group = format!("cn-bench-{}-py", self.run_id);
        let target = BaselineTarget {
            python,
            brokers: &self.args.brokers,
            input: &input,
            output: &output,
            group: &group,
            db_url: self.db_url,
            table,
        };
        // Blocking: nothing else of the benchmark runs meanwhile.
        let run = baseline::run(&target, w.notifications, || self.produce_in_child(&input))?;
        let rows: i64 = self
            .db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(err("baseline rows"))?
            .get(0);
        if run.written != w.notifications as u64 || rows != w.notifications as i64 {
            return Err(format!(
                "the baseline wrote {} notifications ({rows} rows), expected {}",
                run.written, w.notifications
            ));
        }
        settle(&self.db, table).await;
        Ok(run)
    }
}
