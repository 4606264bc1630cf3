//! The campaigns the benchmarks produce.

use campaign_actors::campaign::Campaign;

/// Campaign `i` of `restaurant`, active from an hour before `now` to an hour after.
pub fn campaign(i: usize, restaurant: &str, now: i64) -> Campaign {
    Campaign {
        restaurant_id: restaurant.to_string(),
        adv_campaign_id: format!("30000000-0000-4000-8000-{i:012}"),
        adv_campaign_content: "New dish, 70% off until 14:00! Every comment on it matters to us."
            .into(),
        adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
        adv_campaign_datetime_start: now - 3600,
        adv_campaign_datetime_end: now + 3600,
        datetime_created: now - 7200,
    }
}

/// The campaign as a producer writes it to the input topic.
pub fn campaign_json(c: &Campaign) -> String {
    c.input_json()
}
