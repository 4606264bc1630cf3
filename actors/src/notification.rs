//! The join result: one campaign and the subscribers it goes to, built once by the enricher and
//! shared by both writers (the Spark original's `persist()`).
//!
//! A batch does not copy client ids: it holds the snapshot it was joined against and the
//! restaurant's entry in it. The campaign part of the output JSON is serialized once per batch;
//! each notification only adds its client id and the two trailing fields.

use std::sync::Arc;

use crate::cache::snapshot::{ClientId, Entry, Snapshot};
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

#[derive(Debug)]
pub struct NotificationBatch {
    pub campaign: Campaign,
    /// Unix seconds when the notifications were created; the same for the whole batch.
    pub trigger_datetime_created: i64,
    pub source: SourceRef,
    snapshot: Arc<Snapshot>,
    entry: Entry,
    json_head: Vec<u8>,
    json_tail: Vec<u8>,
}

impl NotificationBatch {
    pub fn new(
        campaign: Campaign,
        trigger_datetime_created: i64,
        source: SourceRef,
        snapshot: Arc<Snapshot>,
        entry: Entry,
    ) -> NotificationBatch {
        let (json_head, json_tail) = json_parts(&campaign, trigger_datetime_created);
        NotificationBatch {
            campaign,
            trigger_datetime_created,
            source,
            snapshot,
            entry,
            json_head,
            json_tail,
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
        out.extend_from_slice(&self.json_head);
        self.client_id(i).write_json(out);
        out.extend_from_slice(&self.json_tail);
    }

    /// The same for a client id given as text (as the Postgres writer returns it).
    pub fn write_json_for(&self, client_id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.json_head);
        crate::cache::snapshot::ClientId::Text(client_id).write_json(out);
        out.extend_from_slice(&self.json_tail);
    }
}

/// The JSON before and after the client id, fields in the contract's order.
fn json_parts(c: &Campaign, trigger: i64) -> (Vec<u8>, Vec<u8>) {
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
    int_field(&mut tail, "trigger_datetime_created", trigger);
    tail.push(b'}');
    (head, tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::snapshot::SnapshotBuilder;
    use crate::campaign::{parse_campaign, split_inline_key};

    const SAMPLE: &str = r#"first_message:{"restaurant_id": "123e4567-e89b-12d3-a456-426614174000","adv_campaign_id": "123e4567-e89b-12d3-a456-426614174003","adv_campaign_content": "first campaign","adv_campaign_owner": "Ivanov Ivan Ivanovich","adv_campaign_owner_contact": "iiivanov@restaurant.ru","adv_campaign_datetime_start": 1659203516,"adv_campaign_datetime_end": 2659207116,"datetime_created": 1659131516}"#;

    const EXPECTED: &str = r#"{"restaurant_id":"123e4567-e89b-12d3-a456-426614174000","adv_campaign_id":"123e4567-e89b-12d3-a456-426614174003","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1659203516,"adv_campaign_datetime_end":2659207116,"client_id":"023e4567-e89b-12d3-a456-426614174000","datetime_created":1659131516,"trigger_datetime_created":1659304828}"#;

    fn source() -> SourceRef {
        SourceRef {
            topic: "in".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        }
    }

    #[test]
    fn output_is_byte_for_byte_the_contract_example() {
        let campaign = parse_campaign(split_inline_key(SAMPLE.as_bytes()).1, 65536).unwrap();
        let mut b = SnapshotBuilder::new();
        b.push(
            "123e4567-e89b-12d3-a456-426614174000",
            "023e4567-e89b-12d3-a456-426614174000",
        );
        let snapshot = Arc::new(b.build());
        let entry = snapshot
            .lookup("123e4567-e89b-12d3-a456-426614174000")
            .unwrap();
        let batch = NotificationBatch::new(campaign, 1659304828, source(), snapshot, entry);
        assert_eq!(batch.len(), 1);
        let mut out = Vec::new();
        batch.write_json(0, &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), EXPECTED);
    }

    #[test]
    fn strings_with_quotes_and_unicode_stay_valid_json() {
        let mut campaign = parse_campaign(split_inline_key(SAMPLE.as_bytes()).1, 65536).unwrap();
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
}
