//! The join result and the output: one campaign and the subscribers it goes to, built once by the
//! enricher and shared by both writers (the Spark original's `persist()`), and the one encoder of
//! the output JSON.
//!
//! A batch does not copy client ids: it holds the snapshot it was joined against and the
//! restaurant's entry in it. The campaign part of the output JSON is serialized once per batch
//! ([`OutputEncoder`]); each notification only adds its client id and the two trailing fields.
//! Recovery encodes the rows it re-sends with the same encoder, so the two can never differ.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use crate::cache::snapshot::{ClientId, Entry, Snapshot};
use crate::cache::Subscribers;
use crate::campaign::Campaign;

/// Where a campaign came from, for logs, offsets and latency.
#[derive(Debug, Clone)]
pub struct SourceRef {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message timestamp, milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// What identifies a notification (restaurant, campaign, client: the key that is unique in
/// Postgres, read from the message's own JSON in the topic) in 16 bytes, however long its ids: what a read-back of the output topic
/// looks for and keeps, so that its memory does not depend on the ids. Two keys share one with a
/// chance of about 2^-128; it is computed only within one process, never stored.
pub type Fingerprint = u128;

/// The [`Fingerprint`] of `campaign`'s notification to `client_id`.
pub fn fingerprint_of(campaign: &Campaign, client_id: &str) -> Fingerprint {
    fingerprint(
        &campaign.restaurant_id,
        &campaign.adv_campaign_id,
        client_id,
    )
}

/// `range` cut into consecutive ranges of at most `size`: a campaign's slices, a slice's
/// statements.
pub fn cut(range: Range<usize>, size: usize) -> impl Iterator<Item = Range<usize>> {
    let end = range.end;
    range
        .step_by(size)
        .map(move |start| start..(start + size).min(end))
}

/// The [`Fingerprint`] of (restaurant, campaign, client).
pub fn fingerprint(restaurant_id: &str, adv_campaign_id: &str, client_id: &str) -> Fingerprint {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, restaurant_id, adv_campaign_id, client_id).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// A set of notifications looked for in (or found in) the output topic.
pub type Wanted = HashSet<Fingerprint>;

/// The output message of one campaign at one trigger time, for any client: the JSON before and
/// after the client id, fields in the contract's order ([`crate::contract::OUTPUT_EXAMPLE`]).
#[derive(Debug, Clone)]
pub struct OutputEncoder {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl OutputEncoder {
    pub fn new(c: &Campaign, trigger_datetime_created: i64) -> OutputEncoder {
        let mut head = Vec::with_capacity(256 + c.adv_campaign_content.len());
        head.push(b'{');
        string_field(&mut head, "restaurant_id", &c.restaurant_id);
        string_field(&mut head, "adv_campaign_id", &c.adv_campaign_id);
        string_field(&mut head, "adv_campaign_content", &c.adv_campaign_content);
        string_field(&mut head, "adv_campaign_owner", &c.adv_campaign_owner);
        string_field(
            &mut head,
            "adv_campaign_owner_contact",
            &c.adv_campaign_owner_contact,
        );
        int_field(
            &mut head,
            "adv_campaign_datetime_start",
            c.adv_campaign_datetime_start,
        );
        head.push(b',');
        int_field(
            &mut head,
            "adv_campaign_datetime_end",
            c.adv_campaign_datetime_end,
        );
        head.extend_from_slice(b",\"client_id\":");
        let mut tail = Vec::with_capacity(64);
        tail.push(b',');
        int_field(&mut tail, "datetime_created", c.datetime_created);
        tail.push(b',');
        int_field(
            &mut tail,
            "trigger_datetime_created",
            trigger_datetime_created,
        );
        tail.push(b'}');
        OutputEncoder { head, tail }
    }

    /// Appends the notification of `client`: exactly the contract's output message.
    pub fn encode(&self, client: ClientId<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        client.write_json(out);
        out.extend_from_slice(&self.tail);
    }
}

fn string_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b',');
}

fn int_field(out: &mut Vec<u8>, name: &str, value: i64) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.to_string().as_bytes());
}

#[derive(Debug)]
pub struct NotificationBatch {
    pub campaign: Campaign,
    /// Unix seconds when the notifications were created; the same for the whole batch.
    pub trigger_datetime_created: i64,
    pub source: SourceRef,
    /// No notification of the batch is handed to the broker at or after this moment (ms since
    /// the epoch): the campaign's end plus the grace, set by the enricher ([`i64::MAX`]: none).
    pub deadline_ms: i64,
    snapshot: Arc<Snapshot>,
    entry: Entry,
    encoder: OutputEncoder,
}

impl NotificationBatch {
    pub fn new(
        campaign: Campaign,
        trigger_datetime_created: i64,
        source: SourceRef,
        snapshot: Arc<Snapshot>,
        entry: Entry,
    ) -> NotificationBatch {
        let encoder = OutputEncoder::new(&campaign, trigger_datetime_created);
        NotificationBatch {
            campaign,
            trigger_datetime_created,
            source,
            deadline_ms: i64::MAX,
            snapshot,
            entry,
            encoder,
        }
    }

    /// Number of notifications: one per subscriber.
    pub fn len(&self) -> usize {
        self.entry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entry.is_empty()
    }

    pub fn client_id(&self, i: usize) -> ClientId<'_> {
        self.snapshot.client(&self.entry, i)
    }

    /// Appends the `i`-th notification's JSON, exactly the contract's output message.
    pub fn write_json(&self, i: usize, out: &mut Vec<u8>) {
        self.encoder.encode(self.client_id(i), out);
    }

    /// The same for a client id given as text (as the Postgres writer returns it).
    pub fn write_json_for(&self, client_id: &str, out: &mut Vec<u8>) {
        self.encoder.encode(ClientId::Text(client_id), out);
    }

    /// The same notifications, created at `trigger_datetime_created` instead (a slice that waited
    /// for quiet hours to end is created when it goes out).
    pub fn created_at(&self, trigger_datetime_created: i64) -> NotificationBatch {
        let mut batch = NotificationBatch::new(
            self.campaign.clone(),
            trigger_datetime_created,
            self.source.clone(),
            self.snapshot.clone(),
            self.entry,
        );
        batch.deadline_ms = self.deadline_ms;
        batch
    }

    /// The notifications of `range` whose clients `subscribers` still lists at the campaign's
    /// restaurant, as a batch of their own, when some no longer are (they unsubscribed, or moved
    /// to another restaurant, after the join): `Some(None)` when none are left, `None` when
    /// nothing changed. Cheap when the restaurant has not changed since the join.
    pub fn still_subscribed(
        &self,
        range: Range<usize>,
        subscribers: &Subscribers,
    ) -> Option<Option<NotificationBatch>> {
        let restaurant = &self.campaign.restaurant_id;
        if !subscribers.may_differ_from(&self.snapshot, restaurant) {
            return None;
        }
        let kept: Vec<ClientId<'_>> = (range.clone())
            .map(|i| self.client_id(i))
            .filter(|c| subscribers.contains_id(restaurant, *c))
            .collect();
        if kept.len() == range.len() {
            return None;
        }
        let mut builder = crate::cache::snapshot::SnapshotBuilder::new();
        for client in kept {
            builder.push_id(restaurant, client);
        }
        let snapshot = Arc::new(builder.build());
        let Some(entry) = snapshot.lookup(restaurant) else {
            return Some(None);
        };
        let mut batch = NotificationBatch::new(
            self.campaign.clone(),
            self.trigger_datetime_created,
            self.source.clone(),
            snapshot,
            entry,
        );
        batch.deadline_ms = self.deadline_ms;
        Some(Some(batch))
    }

    pub fn fingerprint_of(&self, client_id: &str) -> Fingerprint {
        fingerprint_of(&self.campaign, client_id)
    }
}

/// The brief's sample campaign (with `content` as its text, when given) to `clients` subscribers
/// `client-0`, `client-1`, ...: a batch for the sinks' unit tests.
#[cfg(test)]
pub(crate) fn test_batch(content: Option<&str>, clients: usize) -> Arc<NotificationBatch> {
    let json = crate::campaign::split_inline_key(crate::contract::BRIEF_SAMPLE.as_bytes()).1;
    let mut campaign = crate::campaign::parse_campaign(json, 65536).unwrap();
    if let Some(content) = content {
        campaign.adv_campaign_content = content.to_string();
    }
    batch_of(campaign, clients)
}

/// A batch of the brief's sample campaign with another `adv_campaign_id`, to `clients` clients.
#[cfg(test)]
pub(crate) fn test_batch_of(campaign_id: &str, clients: usize) -> Arc<NotificationBatch> {
    let json = crate::campaign::split_inline_key(crate::contract::BRIEF_SAMPLE.as_bytes()).1;
    let mut campaign = crate::campaign::parse_campaign(json, 65536).unwrap();
    campaign.adv_campaign_id = campaign_id.to_string();
    batch_of(campaign, clients)
}

#[cfg(test)]
fn batch_of(campaign: crate::campaign::Campaign, clients: usize) -> Arc<NotificationBatch> {
    let mut b = crate::cache::snapshot::SnapshotBuilder::new();
    for i in 0..clients {
        b.push(&campaign.restaurant_id, &format!("client-{i}"));
    }
    let snapshot = Arc::new(b.build());
    let entry = snapshot.lookup(&campaign.restaurant_id).unwrap();
    let source = SourceRef {
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    Arc::new(NotificationBatch::new(campaign, 1, source, snapshot, entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::snapshot::SnapshotBuilder;
    use crate::campaign::{parse_campaign, split_inline_key};
    use crate::contract::{
        BRIEF_SAMPLE, OUTPUT_EXAMPLE, OUTPUT_EXAMPLE_CLIENT, OUTPUT_EXAMPLE_TRIGGER,
    };

    fn source() -> SourceRef {
        SourceRef {
            topic: "in".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        }
    }

    fn sample() -> Campaign {
        parse_campaign(split_inline_key(BRIEF_SAMPLE.as_bytes()).1, 65536).unwrap()
    }

    #[test]
    fn output_is_byte_for_byte_the_contract_example() {
        let campaign = sample();
        let mut b = SnapshotBuilder::new();
        b.push(&campaign.restaurant_id, OUTPUT_EXAMPLE_CLIENT);
        let snapshot = Arc::new(b.build());
        let entry = snapshot.lookup(&campaign.restaurant_id).unwrap();
        let batch =
            NotificationBatch::new(campaign, OUTPUT_EXAMPLE_TRIGGER, source(), snapshot, entry);
        assert_eq!(batch.len(), 1);
        let mut out = Vec::new();
        batch.write_json(0, &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), OUTPUT_EXAMPLE);
        // A client id as the Postgres writer hands it back (text) encodes the same.
        let mut again = Vec::new();
        batch.write_json_for(OUTPUT_EXAMPLE_CLIENT, &mut again);
        assert_eq!(again, out);
    }

    #[test]
    fn a_batch_created_later_encodes_its_new_time_and_keeps_its_deadline() {
        let base = test_batch(None, 2);
        let mut batch = base.created_at(base.trigger_datetime_created);
        batch.deadline_ms = 123_000;
        let later = batch.created_at(batch.trigger_datetime_created + 3_600);
        assert_eq!(later.deadline_ms, 123_000);
        assert_eq!(later.len(), 2);
        let mut out = Vec::new();
        later.write_json(1, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["trigger_datetime_created"],
            batch.trigger_datetime_created + 3_600
        );
        assert_eq!(v["client_id"], "client-1");
    }

    #[test]
    fn strings_with_quotes_and_unicode_stay_valid_json() {
        let mut campaign = sample();
        campaign.adv_campaign_content = "скидка \"70%\"\n<b>'; DROP TABLE x;--".into();
        let mut b = SnapshotBuilder::new();
        b.push(&campaign.restaurant_id, "weird\"client");
        let snapshot = Arc::new(b.build());
        let entry = snapshot.lookup(&campaign.restaurant_id).unwrap();
        let batch = NotificationBatch::new(campaign.clone(), 7, source(), snapshot, entry);
        let mut out = Vec::new();
        batch.write_json(0, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["adv_campaign_content"], campaign.adv_campaign_content);
        assert_eq!(v["client_id"], "weird\"client");
        assert_eq!(v["trigger_datetime_created"], 7);
        assert_eq!(v.as_object().unwrap().len(), 10);
    }

    #[test]
    fn the_key_read_back_from_the_json_is_the_batch_key() {
        let campaign = sample();
        let encoder = OutputEncoder::new(&campaign, 1);
        let mut out = Vec::new();
        encoder.encode(ClientId::Text("client-1"), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let key = fingerprint(
            v["restaurant_id"].as_str().unwrap(),
            v["adv_campaign_id"].as_str().unwrap(),
            v["client_id"].as_str().unwrap(),
        );
        assert_eq!(key, fingerprint_of(&campaign, "client-1"));
    }

    #[test]
    fn fingerprints_tell_keys_apart_even_where_the_ids_run_together() {
        let a = fingerprint("r", "c1", "x");
        assert_eq!(a, fingerprint_of(&sample_with("r", "c1"), "x"));
        assert_eq!(a, fingerprint("r", "c1", "x"), "the same within a process");
        assert_ne!(a, fingerprint("r", "c", "1x"));
        assert_ne!(a, fingerprint("rc", "1", "x"));
        assert_ne!(a, fingerprint("r", "c1", "y"));
    }

    fn sample_with(restaurant: &str, campaign: &str) -> Campaign {
        let mut c = sample();
        c.restaurant_id = restaurant.into();
        c.adv_campaign_id = campaign.into();
        c
    }
}
