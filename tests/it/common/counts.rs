//! Every (campaign, client) pair counted in each sink, and the counts a test expects.

use std::collections::BTreeMap;

use super::Fixture;

/// Counts per (adv_campaign_id, client_id) in `subscribers_feedback`.
pub async fn row_pairs(f: &Fixture) -> BTreeMap<(String, String), u32> {
    let mut pairs = BTreeMap::new();
    for row in f.feedback_rows().await {
        *pairs
            .entry((row.get("adv_campaign_id"), row.get("client_id")))
            .or_insert(0) += 1;
    }
    pairs
}

/// Counts per (adv_campaign_id, client_id) in the output topic.
pub fn output_pairs(f: &Fixture) -> BTreeMap<(String, String), u32> {
    let mut pairs = BTreeMap::new();
    for (_, v) in f.read_output() {
        *pairs
            .entry((
                v["adv_campaign_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["client_id"].as_str().unwrap_or_default().to_string(),
            ))
            .or_insert(0) += 1;
    }
    pairs
}


/// Every (campaign, client) of `campaigns` x `clients` once: what both sinks hold when each
/// notification went out exactly once.
pub fn once_each<C: AsRef<str>, S: AsRef<str>>(
    campaigns: &[C],
    clients: &[S],
) -> BTreeMap<(String, String), u32> {
    campaigns
        .iter()
        .flat_map(|c| {
            clients
                .iter()
                .map(move |s| ((c.as_ref().to_string(), s.as_ref().to_string()), 1))
        })
        .collect()
}
