//! The ledger: which notifications are in Postgres but not yet confirmed by Kafka, and the
//! recovery that sends them after a crash without sending any twice.
//!
//! The Postgres writer inserts a campaign's new rows and one `campaign_notifier_outbox` row
//! listing their ids in one transaction. The Kafka writer sends exactly those rows; once the
//! broker acknowledged them, the [`Ledger`] actor deletes the outbox row (batched, off the data
//! path). So after any stop, the outbox lists every notification that may be missing from Kafka,
//! and the output topic tells which of them are not: a notification is identified there by its
//! restaurant, campaign and client, the same key that is unique in Postgres. No header or extra
//! field is needed, so the output stays exactly the contract's message.
//!
//! Each process is an *owner* (a random id) and holds a Postgres advisory lock on it for as long
//! as it lives. Recovery takes over only owners whose lock is free: a crashed process, never a
//! live one. At start-up it runs before the reader; while running, every `SWEEP_INTERVAL` it
//! looks for owners that died (a peer in the same consumer group), taking over only marks older
//! than `[ledger] takeover_after_secs`: a peer whose connection to Postgres dropped for a moment
//! loses its lock but is still sending, and must be given time to finish.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_postgres::Client;

use crate::messages::ClearOutbox;
use crate::sinks::kafka_writer::KafkaSinkConfig;

/// First key of every advisory lock the service takes ("cn").
const LOCK_CLASS: i32 = 0x636e;
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Broker timestamps are the producer's clock; allow for a little skew between hosts.
const SCAN_MARGIN_MS: i64 = 5_000;
const SCAN_TIMEOUT: Duration = Duration::from_secs(300);

/// A random owner id for this process.
pub fn new_owner() -> i32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let id = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if id == 0 {
        1
    } else {
        id
    }
}

/// Hands out outbox tokens: unique per process (the owner in the high half) and never reused.
#[derive(Debug)]
pub struct Tokens {
    owner: i32,
    next: u32,
}

impl Tokens {
    pub fn new(owner: i32) -> Tokens {
        Tokens { owner, next: 0 }
    }

    /// Reserves `n` consecutive tokens and returns the first.
    pub fn take(&mut self, n: usize) -> i64 {
        let first = (i64::from(self.owner) << 32) | i64::from(self.next);
        self.next = self.next.wrapping_add(n as u32);
        first
    }
}

/// Takes the lock that tells other instances this owner is alive.
pub async fn hold_owner_lock(client: &Client, owner: i32) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &owner])
        .await
        .map(|_| ())
}

/// What identifies a notification, in Postgres (the unique key) and in the output topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationKey {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    pub client_id: String,
}

impl NotificationKey {
    pub fn of(batch: &crate::notification::NotificationBatch, client_id: &str) -> NotificationKey {
        NotificationKey {
            restaurant_id: batch.campaign.restaurant_id.clone(),
            adv_campaign_id: batch.campaign.adv_campaign_id.clone(),
            client_id: client_id.to_string(),
        }
    }
}

pub type Wanted = HashSet<NotificationKey>;

#[derive(serde::Deserialize)]
struct KeyFields<'a> {
    #[serde(borrow)]
    restaurant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    adv_campaign_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    client_id: std::borrow::Cow<'a, str>,
}

/// Reads the output topic from `since_ms` to its end and returns which of `wanted` it holds.
/// Blocking: run it on a blocking thread.
pub fn find_sent(
    config: &KafkaSinkConfig,
    since_ms: i64,
    wanted: &Wanted,
) -> Result<Wanted, String> {
    let mut found = HashSet::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("campaign-notifier-ledger-{}", new_owner()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &config.overrides {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cc.set(k, v);
        }
    }
    let consumer: BaseConsumer = cc.create().map_err(|e| format!("scan consumer: {e}"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(|e| format!("metadata of {}: {e}", config.topic))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut by_time = TopicPartitionList::new();
    for &p in &partitions {
        by_time
            .add_partition_offset(&config.topic, p, Offset::Offset(since_ms - SCAN_MARGIN_MS))
            .map_err(|e| e.to_string())?;
    }
    let starts = consumer
        .offsets_for_times(by_time, timeout)
        .map_err(|e| format!("offsets for times: {e}"))?;
    let mut assign = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for e in starts.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&config.topic, e.partition(), timeout)
            .map_err(|e| format!("watermarks: {e}"))?;
        if let Offset::Offset(start) = e.offset() {
            if start < high {
                assign
                    .add_partition_offset(&config.topic, e.partition(), Offset::Offset(start))
                    .map_err(|e| e.to_string())?;
                ends.insert(e.partition(), high);
            }
        }
    }
    if ends.is_empty() {
        return Ok(found);
    }
    consumer
        .assign(&assign)
        .map_err(|e| format!("assign: {e}"))?;
    let deadline = Instant::now() + SCAN_TIMEOUT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "reading back {} took longer than {SCAN_TIMEOUT:?}",
                config.topic
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| format!("reading back {}: {e}", config.topic))?;
        // Anything in the topic that is not one of our messages is simply not a match.
        if let Some(fields) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<KeyFields<'_>>(p).ok())
        {
            let key = NotificationKey {
                restaurant_id: fields.restaurant_id.into_owned(),
                adv_campaign_id: fields.adv_campaign_id.into_owned(),
                client_id: fields.client_id.into_owned(),
            };
            if wanted.contains(&key) {
                found.insert(key);
            }
        }
        if ends
            .get(&message.partition())
            .is_some_and(|&high| message.offset() + 1 >= high)
        {
            ends.remove(&message.partition());
        }
    }
    Ok(found)
}

/// The output message, built from a `subscribers_feedback` row (recovery only; the data path
/// serializes from the batch). Field order is the contract's.
#[derive(Serialize)]
pub struct OutputRecord {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    pub adv_campaign_content: String,
    pub adv_campaign_owner: String,
    pub adv_campaign_owner_contact: String,
    pub adv_campaign_datetime_start: i64,
    pub adv_campaign_datetime_end: i64,
    pub client_id: String,
    pub datetime_created: i64,
    pub trigger_datetime_created: i64,
}

impl OutputRecord {
    fn key(&self) -> NotificationKey {
        NotificationKey {
            restaurant_id: self.restaurant_id.clone(),
            adv_campaign_id: self.adv_campaign_id.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub owners: usize,
    pub marked: usize,
    pub already_sent: usize,
    pub resent: usize,
}

/// Finishes the work of every dead owner (other than `me`) whose marks are at least
/// `min_age_secs` old: sends what the output topic lacks, then clears the marks.
pub async fn recover(
    client: &Client,
    kafka: &KafkaSinkConfig,
    me: i32,
    min_age_secs: f64,
) -> Result<RecoveryReport, String> {
    let pg = |e: tokio_postgres::Error| crate::postgres::describe(&e);
    let owners: Vec<i32> = client
        .query(
            "SELECT DISTINCT owner FROM public.campaign_notifier_outbox \
             WHERE owner <> $1 AND created_at < now() - make_interval(secs => $2)",
            &[&me, &min_age_secs],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = RecoveryReport::default();
    for owner in owners {
        let free: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_CLASS, &owner],
            )
            .await
            .map_err(pg)?
            .get(0);
        if !free {
            continue;
        }
        let result = recover_owner(client, kafka, owner).await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &owner])
            .await;
        let r = result?;
        report.owners += 1;
        report.marked += r.marked;
        report.already_sent += r.already_sent;
        report.resent += r.resent;
    }
    Ok(report)
}

async fn recover_owner(
    client: &Client,
    kafka: &KafkaSinkConfig,
    owner: i32,
) -> Result<RecoveryReport, String> {
    let pg = |e: tokio_postgres::Error| crate::postgres::describe(&e);
    let marks = client
        .query(
            "SELECT id, feedback_ids, (extract(epoch FROM created_at) * 1000)::int8 \
             FROM public.campaign_notifier_outbox WHERE owner = $1",
            &[&owner],
        )
        .await
        .map_err(pg)?;
    let mark_ids: Vec<i64> = marks.iter().map(|r| r.get(0)).collect();
    let ids: Vec<i32> = marks.iter().flat_map(|r| r.get::<_, Vec<i32>>(1)).collect();
    let since_ms = marks
        .iter()
        .map(|r| r.get::<_, i64>(2))
        .min()
        .unwrap_or_default();
    let rows = client
        .query(
            "SELECT id, restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, client_id, datetime_created, trigger_datetime_created \
             FROM public.subscribers_feedback WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(pg)?;
    let records: Vec<OutputRecord> = rows
        .iter()
        .map(|row| OutputRecord {
            restaurant_id: row.get(1),
            adv_campaign_id: row.get(2),
            adv_campaign_content: row.get(3),
            adv_campaign_owner: row.get(4),
            adv_campaign_owner_contact: row.get(5),
            adv_campaign_datetime_start: row.get(6),
            adv_campaign_datetime_end: row.get(7),
            client_id: row.get(8),
            datetime_created: row.get(9),
            trigger_datetime_created: i64::from(row.get::<_, i32>(10)),
        })
        .collect();
    let wanted: Wanted = records.iter().map(OutputRecord::key).collect();
    let scan_config = kafka.clone();
    let found = tokio::task::spawn_blocking(move || find_sent(&scan_config, since_ms, &wanted))
        .await
        .map_err(|e| format!("scan task failed: {e}"))??;
    let missing: Vec<&OutputRecord> = records
        .iter()
        .filter(|r| !found.contains(&r.key()))
        .collect();
    if !missing.is_empty() {
        let producer: FutureProducer = kafka
            .client_config()
            .create()
            .map_err(|e| format!("recovery producer: {e}"))?;
        let mut deliveries = Vec::with_capacity(missing.len());
        for record in &missing {
            let payload = serde_json::to_vec(record).map_err(|e| e.to_string())?;
            let delivery = producer
                .send_result(
                    FutureRecord::to(&kafka.topic)
                        .payload(&payload)
                        .key(record.client_id.as_bytes()),
                )
                .map_err(|(e, _)| format!("recovery send: {e}"))?;
            deliveries.push(delivery);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("recovery delivery: {e}")),
                Err(_) => return Err("recovery producer dropped".into()),
            }
        }
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    }
    client
        .execute(
            "DELETE FROM public.campaign_notifier_outbox WHERE id = ANY($1)",
            &[&mark_ids],
        )
        .await
        .map_err(pg)?;
    let report = RecoveryReport {
        owners: 1,
        marked: records.len(),
        already_sent: found.len(),
        resent: missing.len(),
    };
    log::info!(
        "ledger: recovered owner {owner}: {} notifications were marked, {} already in {}, {} sent now",
        report.marked,
        report.already_sent,
        kafka.topic,
        report.resent
    );
    Ok(report)
}

/// Holds this process's owner lock, clears acknowledged marks in batches, and sweeps for dead
/// owners. Supervised: a lost connection restarts it, which takes the lock again.
pub struct Ledger {
    url: String,
    owner: i32,
    kafka: KafkaSinkConfig,
    client: Option<Rc<Client>>,
    to_clear: Vec<i64>,
    clearing: bool,
    sweeping: bool,
    takeover_after: Duration,
    metrics: crate::metrics::Metrics,
}

impl Ledger {
    pub fn new(
        url: String,
        owner: i32,
        kafka: KafkaSinkConfig,
        takeover_after: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Ledger {
        Ledger {
            url,
            owner,
            kafka,
            client: None,
            to_clear: Vec::new(),
            clearing: false,
            sweeping: false,
            takeover_after,
            metrics,
        }
    }

    fn clear(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.clearing || self.to_clear.is_empty() {
            return;
        }
        self.clearing = true;
        let ids = std::mem::take(&mut self.to_clear);
        let fut = async move {
            let result = client
                .execute(
                    "DELETE FROM public.campaign_notifier_outbox WHERE id = ANY($1)",
                    &[&ids],
                )
                .await;
            (ids, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(ids, result), act, ctx| {
            act.clearing = false;
            if let Err(e) = result {
                // Not lost: kept to clear after the reconnect. A mark left behind is only work
                // for the next recovery, which finds its notifications already in Kafka.
                log::warn!(
                    "ledger: cannot clear outbox marks: {}",
                    crate::postgres::describe(&e)
                );
                act.to_clear.extend(ids);
                ctx.stop();
            }
        }));
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let (kafka, owner) = (self.kafka.clone(), self.owner);
        let min_age = self.takeover_after.as_secs_f64();
        let fut = async move { recover(&client, &kafka, owner, min_age).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, _| {
            act.sweeping = false;
            if let Err(e) = result {
                log::warn!("ledger: recovery sweep failed, will retry: {e}");
            }
        }));
    }
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (url, owner) = (self.url.clone(), self.owner);
        ctx.wait(
            async move {
                let client = crate::postgres::connect(&url, "ledger").await?;
                hold_owner_lock(&client, owner).await?;
                Ok::<_, tokio_postgres::Error>(client)
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(client) => {
                    act.client = Some(Rc::new(client));
                    ctx.run_interval(Duration::from_millis(200), |act, ctx| {
                        if act.client.as_ref().is_some_and(|c| c.is_closed()) {
                            ctx.stop();
                        } else {
                            act.clear(ctx);
                        }
                    });
                    ctx.run_interval(SWEEP_INTERVAL, |act, ctx| act.sweep(ctx));
                }
                Err(e) => {
                    log::warn!("ledger: cannot connect: {}", crate::postgres::describe(&e));
                    ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.stop());
                }
            }),
        );
    }
}

impl Supervised for Ledger {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.metrics
            .actor_restarts
            .with_label_values(&["ledger"])
            .inc();
        self.client = None;
        self.clearing = false;
        self.sweeping = false;
    }
}

impl Handler<ClearOutbox> for Ledger {
    type Result = ();

    fn handle(&mut self, msg: ClearOutbox, _: &mut Context<Self>) {
        self.to_clear.extend(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_message_is_the_same_bytes_as_the_data_path_one() {
        use crate::campaign::parse_campaign;
        use crate::notification::{NotificationBatch, SourceRef};
        let campaign = parse_campaign(
            br#"{"restaurant_id":"r","adv_campaign_id":"c","adv_campaign_content":"50% \"off\"","adv_campaign_owner":"o","adv_campaign_owner_contact":"e@x","adv_campaign_datetime_start":1,"adv_campaign_datetime_end":2,"datetime_created":0}"#,
            1 << 16,
        )
        .unwrap();
        let mut b = crate::cache::snapshot::SnapshotBuilder::new();
        b.push("r", "client-1");
        let snapshot = std::sync::Arc::new(b.build());
        let entry = snapshot.lookup("r").unwrap();
        let source = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        };
        let batch = NotificationBatch::new(campaign.clone(), 42, source, snapshot, entry);
        let mut data_path = Vec::new();
        batch.write_json(0, &mut data_path);
        let record = OutputRecord {
            restaurant_id: campaign.restaurant_id,
            adv_campaign_id: campaign.adv_campaign_id,
            adv_campaign_content: campaign.adv_campaign_content,
            adv_campaign_owner: campaign.adv_campaign_owner,
            adv_campaign_owner_contact: campaign.adv_campaign_owner_contact,
            adv_campaign_datetime_start: 1,
            adv_campaign_datetime_end: 2,
            client_id: "client-1".into(),
            datetime_created: 0,
            trigger_datetime_created: 42,
        };
        assert_eq!(serde_json::to_vec(&record).unwrap(), data_path);
        assert_eq!(record.key(), NotificationKey::of(&batch, "client-1"));
    }

    #[test]
    fn tokens_are_unique_per_owner_and_reserve_ranges() {
        let mut a = Tokens::new(7);
        let mut b = Tokens::new(8);
        let a1 = a.take(3);
        let a2 = a.take(1);
        assert_eq!(a2 - a1, 3);
        assert_ne!(a1, b.take(1));
        assert_eq!(a1 >> 32, 7);
        let mut neg = Tokens::new(-5);
        assert_eq!(neg.take(1) >> 32, -5);
    }
}
