//! The ceilings: (a) the service's Kafka sink alone, (b) a raw binary `COPY` of the same rows,
//! (c) both at once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use campaign_actors::notification::NotificationBatch;
use campaign_actors::sinks::kafka_writer::{KafkaJob, KafkaSink, KafkaSinkSettings};
use campaign_actors::sinks::pg_writer::campaign_params;
use campaign_actors::sinks::Sink;
use futures::{pin_mut, StreamExt, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::{progress, settle, Bench};
use crate::measure::{cpu_seconds, others_cpu_seconds};
use crate::setup::{err, BenchResult};
use crate::workload::Workload;

/// (a), (b), (c): seconds each, CPU seconds of this process in (a) and (c), and of the broker
/// and Postgres in (c).
pub(super) struct Ceilings {
    pub(super) a: f64,
    pub(super) a_cpu: f64,
    pub(super) b: f64,
    pub(super) c: f64,
    pub(super) c_cpu: f64,
    pub(super) c_others: (f64, f64),
}

impl Bench<'_> {
    /// (a), (b), (c). The producer runs on a thread of its own, as the service's Kafka writer
    /// does, so that in (c) neither sink waits for the other's CPU work.
    pub(super) async fn ceilings(&self, w: &Arc<Workload>) -> BenchResult<Ceilings> {
        let db = &self.db;
        progress("(a) raw producer");
        let kafka = self.kafka("raw");
        let cpu_before = cpu_seconds();
        let a = produce_on_thread(kafka, w.clone()).await?;
        let a_cpu = cpu_seconds() - cpu_before;
        progress("(b) raw binary COPY");
        let b = raw_copy(db, "bench_copy", w).await?;
        settle(db, "bench_copy").await;
        progress("(c) both at once");
        let kafka = self.kafka("dual");
        let others_before = others_cpu_seconds();
        let cpu_before = cpu_seconds();
        let (ca, cb) = futures::join!(
            produce_on_thread(kafka, w.clone()),
            raw_copy(db, "bench_dual", w)
        );
        let c = ca?.max(cb?);
        let c_cpu = cpu_seconds() - cpu_before;
        let c_others = others_cpu_seconds();
        let c_others = (c_others.0 - others_before.0, c_others.1 - others_before.1);
        settle(db, "bench_dual").await;
        Ok(Ceilings {
            a,
            a_cpu,
            b,
            c,
            c_cpu,
            c_others,
        })
    }
}

/// (a): every notification through the service's Kafka sink alone (its producer settings, its
/// chunking per partition), in groups as the Kafka writer forms them; returns seconds.
async fn raw_produce(kafka: &KafkaSinkSettings, w: &Workload) -> BenchResult<f64> {
    let sink = KafkaSink::connect(kafka.clone())
        .await
        .map_err(err("producer"))?;
    let started = Instant::now();
    futures::stream::iter(write_groups(w).into_iter().map(|g| sink.write(g)))
        .buffer_unordered(KafkaSink::MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<_>>()
        .await
        .map_err(err("produce"))?;
    sink.close().await;
    Ok(started.elapsed().as_secs_f64())
}

/// The workload's Kafka jobs in groups of about [`GROUP_ROWS`] rows, as the Kafka writer forms
/// them.
fn write_groups(w: &Workload) -> Vec<Vec<Arc<KafkaJob>>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut rows = 0;
    for job in &w.kafka_jobs {
        group.push(job.clone());
        rows += job.clients.len();
        if rows >= GROUP_ROWS {
            groups.push(std::mem::take(&mut group));
            rows = 0;
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// Rows per write, as the writers' default `batch_max_rows`.
const GROUP_ROWS: usize = 5_000;

/// (a) on a thread of its own, with a runtime of its own: returns seconds.
async fn produce_on_thread(kafka: KafkaSinkSettings, w: Arc<Workload>) -> BenchResult<f64> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err("runtime"))
            .and_then(|rt| rt.block_on(raw_produce(&kafka, &w)));
        let _ = tx.send(result);
    });
    rx.await.map_err(err("producer thread"))?
}

/// (b): every row by binary COPY into `table`; returns seconds.
async fn raw_copy(client: &Client, table: &str, w: &Workload) -> BenchResult<f64> {
    let started = Instant::now();
    copy_rows(client, table, &w.batches).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// One binary `COPY` of the batches' rows into `table`.
async fn copy_rows(
    client: &Client,
    table: &str,
    batches: &[Arc<NotificationBatch>],
) -> BenchResult<()> {
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            concat!(
                "COPY {} (",
                campaign_actors::notification_columns!(),
                ") FROM STDIN (FORMAT binary)"
            ),
            table
        ))
        .await
        .map_err(err("copy in"))?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::INT4,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for batch in batches {
        let [r, c, content, owner, contact, start, end, created] = campaign_params(&batch.campaign);
        let trigger = batch.trigger_datetime_created as i32;
        for i in 0..batch.len() {
            let client = batch.client_id(i).to_string();
            let row: [&(dyn ToSql + Sync); 10] = [
                r, c, content, owner, contact, start, end, &client, created, &trigger,
            ];
            writer.as_mut().write(&row).await.map_err(err("copy row"))?;
        }
    }
    writer.finish().await.map_err(err("copy finish"))?;
    Ok(())
}
