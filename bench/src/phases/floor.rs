//! The latency floor of the two sinks: each campaign of the latency phase written by the
//! service's own Postgres sink and then its Kafka sink, with no pipeline in between.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use campaign_actors::cache::snapshot::{Entry, Snapshot};
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::postgres::PostgresSettings;
use campaign_actors::sinks::kafka_writer::{KafkaJob, KafkaSink};
use campaign_actors::sinks::pg_writer::{PgJob, PgSink, PgSinkConfig};
use campaign_actors::sinks::Sink;

use super::{progress, Bench};
use crate::setup::{err, BenchResult};
use crate::workload::{campaign, LATENCY_RESTAURANT};

/// Seconds a floor campaign took: in all, until its rows were in Postgres (waiting for the
/// connection included), and its Kafka write alone.
pub(super) struct FloorTimes {
    pub(super) total: f64,
    pub(super) postgres: f64,
    pub(super) kafka: f64,
}

/// The two sinks, shared by the floor's campaigns; Postgres one transaction at a time.
struct FloorSinks {
    pg: Rc<futures::lock::Mutex<PgSink>>,
    kafka: Rc<KafkaSink>,
}

impl Bench<'_> {
    /// The sinks' own latency for one campaign of the latency phase, written one after the other
    /// as the pipeline does (Postgres, then Kafka), at the latency phase's rate: seconds from the
    /// moment each campaign is due until its rows are in Postgres and then its messages
    /// acknowledged by the broker, written by the service's own two sinks (Postgres: one
    /// transaction at a time, as the writer does) with no pipeline in between; campaigns overlap
    /// as they would in the pipeline. The outbox marks it leaves are removed afterwards.
    pub(super) async fn floor(
        &self,
        snapshot: &Arc<Snapshot>,
        rate: u32,
    ) -> BenchResult<Vec<FloorTimes>> {
        progress("latency floor of the two sinks");
        let sinks = self.floor_sinks().await?;
        let entry = snapshot
            .lookup(LATENCY_RESTAURANT)
            .ok_or("the latency restaurant is not in the cache")?;
        let total = (rate * self.args.latency_secs) as usize;
        let tick = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut tasks = Vec::with_capacity(total);
        let mut next = Instant::now();
        for i in 0..total {
            let job = floor_job(i, self.now, snapshot, entry);
            let (pg, kafka) = (sinks.pg.clone(), sinks.kafka.clone());
            tasks.push(actix_rt::spawn(floor_one(
                pg,
                kafka,
                job,
                self.now,
                Instant::now(),
            )));
            next += tick;
            actix_rt::time::sleep_until(next.into()).await;
        }
        let mut secs = Vec::with_capacity(total);
        for t in tasks {
            secs.push(t.await.map_err(err("floor task"))??);
        }
        self.db
            .batch_execute("DELETE FROM campaign_notifier_outbox")
            .await
            .map_err(err("floor marks"))?;
        Ok(secs)
    }

    /// The service's Postgres sink on this run's database and its Kafka sink on the topic `floor`.
    async fn floor_sinks(&self) -> BenchResult<FloorSinks> {
        let settings = self.kafka("floor");
        let pg = Rc::new(futures::lock::Mutex::new(
            PgSink::connect(PgSinkConfig {
                postgres: PostgresSettings::for_url(self.db_url),
                owner: 0,
                lease: campaign_actors::lease::Lease::unbounded(),
                // The brief's DDL, as the benchmark's schema step creates it.
                trigger_column: campaign_actors::postgres::TriggerColumn::Int4,
                cap: None,
            })
            .await
            .map_err(err("postgres sink"))?,
        ));
        let kafka = Rc::new(
            KafkaSink::connect(settings)
                .await
                .map_err(err("producer"))?,
        );
        Ok(FloorSinks { pg, kafka })
    }
}

/// The Postgres job of the floor's campaign `i`: every notification of the latency restaurant.
fn floor_job(i: usize, now: i64, snapshot: &Arc<Snapshot>, entry: Entry) -> Arc<PgJob> {
    let c = campaign(2_000_000 + i, LATENCY_RESTAURANT, now);
    let source = SourceRef {
        topic: "bench".into(),
        partition: 0,
        offset: i as i64,
        timestamp_ms: None,
    };
    let batch = NotificationBatch::new(c, now, source, snapshot.clone(), entry);
    Arc::new(PgJob {
        range: 0..batch.len(),
        batch: Arc::new(batch),
        first_token: i as i64,
        replay: false,
    })
}

/// One floor campaign, due at `started`: its rows into Postgres, then its messages to Kafka.
async fn floor_one(
    pg: Rc<futures::lock::Mutex<PgSink>>,
    sink: Rc<KafkaSink>,
    job: Arc<PgJob>,
    now: i64,
    started: Instant,
) -> BenchResult<FloorTimes> {
    let batch = job.batch.clone();
    let inserted = {
        let pg = pg.lock().await;
        pg.write(vec![job]).await.map_err(err("floor insert"))?
    };
    let in_postgres = started.elapsed().as_secs_f64();
    let clients = inserted
        .into_iter()
        .next()
        .map(|i| i.clients)
        .unwrap_or_default();
    let job = Arc::new(KafkaJob {
        batch,
        clients,
        created_ms: now * 1000,
    });
    let kafka_started = Instant::now();
    sink.write(vec![job]).await.map_err(err("floor produce"))?;
    Ok(FloorTimes {
        total: started.elapsed().as_secs_f64(),
        postgres: in_postgres,
        kafka: kafka_started.elapsed().as_secs_f64(),
    })
}
