//! `reconcile`: whether the two sinks hold the same notifications of some campaigns, and with
//! `--repair`, making them (see "Campaign controls" in docs/design.md).
//!
//! The campaigns are rows of `campaign_notifier_campaigns`: those of one id, or changed since a
//! time. Postgres' pairs are read by the notification key's index, with those an outbox mark still
//! lists apart (in flight: written, not yet confirmed by Kafka, so not missing); Kafka's are read
//! from the output topic from before the earliest of the campaigns could have been sent, counted
//! per `(restaurant, campaign, client)` from each message's own JSON. The repair ([`repair`])
//! sends what Kafka lacks through the one producer path while the campaign is active, withdraws it
//! from Postgres once the campaign is over (nothing goes out after a campaign's end), and inserts
//! what Postgres lacks; a pair twice in Kafka cannot be unsent and is only reported.

mod repair;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::{connect, pg, read_outcome, OpsError};
use crate::campaign::Campaign;
use crate::config::Settings;
use crate::kafka::scan::{self, Whose};
use crate::ledger::recovery::send::campaign_of;

pub use repair::Repaired;

/// How far before a campaign's arrival (or start) its notifications are looked for: the
/// producers' clocks may disagree with each other and with Postgres'.
const CLOCK_MARGIN_MS: i64 = 5 * 60 * 1000;
/// Clients of each list printed; the counts are whole.
const SAMPLE: usize = 20;
/// A read of the output topic that receives nothing this long fails.
const STALL: Duration = Duration::from_secs(30);

/// Which campaigns, and whether to mend them.
#[derive(Debug, Clone, Default)]
pub struct ReconcileRequest {
    /// The campaigns of this `adv_campaign_id` (every restaurant's).
    pub campaign: Option<String>,
    /// The campaigns whose row changed at or after this time (unix seconds).
    pub since_secs: Option<i64>,
    pub repair: bool,
}

/// Some clients of a list, and how many it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Clients {
    pub count: usize,
    /// The first of them (sorted), at most 20.
    pub sample: Vec<String>,
}

impl Clients {
    fn of(mut all: Vec<String>) -> Clients {
        all.sort_unstable();
        let count = all.len();
        all.truncate(SAMPLE);
        Clients { count, sample: all }
    }
}

/// One campaign's comparison, printed as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignReport {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    /// Rows in `subscribers_feedback`.
    pub postgres: usize,
    /// Distinct clients in the output topic.
    pub kafka: usize,
    /// Rows an outbox mark still lists: on their way to Kafka, not missing.
    pub in_flight: usize,
    pub only_in_postgres: Clients,
    pub only_in_kafka: Clients,
    pub twice_in_kafka: Clients,
    /// No pair only in one sink and none twice in Kafka (before any repair).
    pub agree: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Repaired>,
}

/// One campaign as both sinks hold it.
struct Compared {
    campaign: Campaign,
    /// Postgres' clock now is past its end plus the grace, or it is recalled: nothing of it may
    /// be sent.
    over: bool,
    postgres: HashSet<String>,
    in_flight: HashSet<String>,
    /// Per client, how many times the output topic has it.
    kafka: HashMap<String, u32>,
    /// The first message of each client Postgres lacks (to insert its row from).
    lacking_rows: HashMap<String, Vec<u8>>,
}

impl Compared {
    /// The clients Postgres has and Kafka lacks, but for those on their way (in flight).
    fn missing_in_kafka(&self) -> Vec<String> {
        self.postgres
            .iter()
            .filter(|client| !self.kafka.contains_key(*client) && !self.in_flight.contains(*client))
            .cloned()
            .collect()
    }
}

/// Compares (and with `repair`, mends) the chosen campaigns; `progress` is told the messages of
/// the output topic to read, then each one read.
pub async fn reconcile(
    settings: &Settings,
    request: &ReconcileRequest,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<CampaignReport>, OpsError> {
    if request.campaign.is_none() && request.since_secs.is_none() {
        return Err(OpsError::Refused(
            "say which campaigns: --campaign ID or --since UNIX",
        ));
    }
    let client = connect(&settings.postgres, "reconcile").await?;
    let grace = settings.lifecycle.window.end_grace_secs;
    let (mut compared, from_ms) = chosen(&client, request, grace).await?;
    if compared.is_empty() {
        return Ok(Vec::new());
    }
    for c in &mut compared {
        read_postgres(&client, c).await?;
    }
    let compared = read_kafka(settings, compared, from_ms, progress).await?;
    let mut reports = Vec::with_capacity(compared.len());
    for c in compared {
        let mut report = report_of(&c);
        if request.repair && !report.agree {
            report.repaired = Some(repair::mend(settings, &client, &c).await?);
        }
        reports.push(report);
    }
    Ok(reports)
}

/// What the read of the output topic has come to.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// This many messages are to be read.
    Total(u64),
    /// This many were read so far.
    Read(u64),
}

/// The campaigns chosen, and the time from which their notifications are looked for.
async fn chosen(
    client: &Client,
    request: &ReconcileRequest,
    grace: i64,
) -> Result<(Vec<Compared>, i64), OpsError> {
    let rows = client
        .query(
            "SELECT restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
                    adv_campaign_owner_contact, adv_campaign_datetime_start,
                    adv_campaign_datetime_end, datetime_created,
                    least(adv_campaign_datetime_start * 1000, source_timestamp_ms) AS earliest_ms,
                    (extract(epoch FROM now())::int8 > adv_campaign_datetime_end + $3
                     OR recalled_at IS NOT NULL) AS over
             FROM public.campaign_notifier_campaigns
             WHERE ($1::text IS NULL OR adv_campaign_id = $1)
               AND ($2::int8 IS NULL OR updated_at >= to_timestamp($2))
             ORDER BY restaurant_id, adv_campaign_id",
            &[&request.campaign, &request.since_secs, &grace],
        )
        .await
        .map_err(pg("reading the campaigns"))?;
    let mut from_ms = i64::MAX;
    let mut compared = Vec::with_capacity(rows.len());
    for row in &rows {
        let earliest: i64 = row
            .try_get("earliest_ms")
            .map_err(pg("reading the campaigns"))?;
        from_ms = from_ms.min(earliest);
        compared.push(Compared {
            campaign: campaign_of(row).map_err(pg("reading the campaigns"))?,
            over: row.try_get("over").map_err(pg("reading the campaigns"))?,
            postgres: HashSet::new(),
            in_flight: HashSet::new(),
            kafka: HashMap::new(),
            lacking_rows: HashMap::new(),
        });
    }
    Ok((compared, from_ms.saturating_sub(CLOCK_MARGIN_MS).max(0)))
}

/// The campaign's clients in `subscribers_feedback`, and those an outbox mark lists.
async fn read_postgres(client: &Client, c: &mut Compared) -> Result<(), OpsError> {
    let key = [&c.campaign.restaurant_id, &c.campaign.adv_campaign_id];
    let rows = client
        .query(
            // The marks' ids read once (hashed), not the outbox scanned again for every row.
            "WITH marked AS (SELECT unnest(feedback_ids) AS id FROM public.campaign_notifier_outbox)
             SELECT client_id, s.id IN (SELECT id FROM marked)
             FROM public.subscribers_feedback s
             WHERE restaurant_id = $1 AND adv_campaign_id = $2",
            &[key[0], key[1]],
        )
        .await
        .map_err(pg("reading the campaign's rows"))?;
    for row in rows {
        let client: String = row.try_get(0).map_err(pg("reading the campaign's rows"))?;
        let marked: bool = row.try_get(1).map_err(pg("reading the campaign's rows"))?;
        if marked {
            c.in_flight.insert(client.clone());
        }
        c.postgres.insert(client);
    }
    Ok(())
}

/// Reads the output topic from `from_ms` to its end, counting the chosen campaigns' clients.
async fn read_kafka(
    settings: &Settings,
    mut compared: Vec<Compared>,
    from_ms: i64,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<Compared>, OpsError> {
    let (producer, topic) = (settings.producer.clone(), settings.output_topic.clone());
    // The read's counts stay with the campaigns, on the reading thread; the progress comes back.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::task::spawn_blocking(move || {
        let index: HashMap<(String, String), usize> = compared
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = &c.campaign;
                ((id.restaurant_id.clone(), id.adv_campaign_id.clone()), i)
            })
            .collect();
        let mut read = 0u64;
        let total = |n| {
            let _ = tx.send(Progress::Total(n));
        };
        let outcome = scan::read_topic_counted(&producer, &topic, from_ms, STALL, total, |m| {
            read += 1;
            if read % 1_000 == 0 {
                let _ = tx.send(Progress::Read(read));
            }
            count(&index, &mut compared, rdkafka::Message::payload(m));
        });
        let _ = tx.send(Progress::Read(read));
        outcome.map(|_| compared)
    });
    while let Some(p) = rx.recv().await {
        progress(p);
    }
    read_outcome(&settings.output_topic, reader.await)
}

/// Counts one output message for its campaign, if it is one of the chosen.
fn count(
    index: &HashMap<(String, String), usize>,
    compared: &mut [Compared],
    payload: Option<&[u8]>,
) {
    let Some(payload) = payload else { return };
    // Anything in the topic that is not a notification is simply not one of ours.
    let Ok(whose) = serde_json::from_slice::<Whose<'_>>(payload) else {
        return;
    };
    let key = (
        whose.restaurant_id.into_owned(),
        whose.adv_campaign_id.into_owned(),
    );
    let Some(&i) = index.get(&key) else { return };
    let c = &mut compared[i];
    let client = whose.client_id.into_owned();
    if !c.postgres.contains(&client) && !c.lacking_rows.contains_key(&client) {
        c.lacking_rows.insert(client.clone(), payload.to_vec());
    }
    *c.kafka.entry(client).or_default() += 1;
}

fn report_of(c: &Compared) -> CampaignReport {
    let only_in_postgres = c.missing_in_kafka();
    let only_in_kafka: Vec<String> = c.lacking_rows.keys().cloned().collect();
    let twice: Vec<String> = c
        .kafka
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(client, _)| client.clone())
        .collect();
    let agree = only_in_postgres.is_empty() && only_in_kafka.is_empty() && twice.is_empty();
    CampaignReport {
        restaurant_id: c.campaign.restaurant_id.clone(),
        adv_campaign_id: c.campaign.adv_campaign_id.clone(),
        postgres: c.postgres.len(),
        kafka: c.kafka.len(),
        in_flight: c.in_flight.len(),
        only_in_postgres: Clients::of(only_in_postgres),
        only_in_kafka: Clients::of(only_in_kafka),
        twice_in_kafka: Clients::of(twice),
        agree,
        repaired: None,
    }
}
