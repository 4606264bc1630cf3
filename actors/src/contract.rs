//! What the customer's brief fixes, written down once: the sample input, the output example, the
//! two tables, and the columns that hold a notification.
//!
//! Parsing lives in the campaign module and the one encoder of the output JSON in the
//! notification module; they and the SQL of the writers and of recovery refer to this module, so
//! that a field is never spelled in one place and forgotten in another. Tests, the demo and the
//! benchmark use the samples from here.

/// The brief's sample campaign, in the brief's own `key:json` form (what `kcat -K:` sends).
pub const BRIEF_SAMPLE: &str = r#"first_message:{"restaurant_id": "123e4567-e89b-12d3-a456-426614174000","adv_campaign_id": "123e4567-e89b-12d3-a456-426614174003","adv_campaign_content": "first campaign","adv_campaign_owner": "Ivanov Ivan Ivanovich","adv_campaign_owner_contact": "iiivanov@restaurant.ru","adv_campaign_datetime_start": 1659203516,"adv_campaign_datetime_end": 2659207116,"datetime_created": 1659131516}"#;

/// The restaurant of [`BRIEF_SAMPLE`].
pub const BRIEF_SAMPLE_RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";

/// The contract's output example for [`BRIEF_SAMPLE`]: byte for byte what the service writes for
/// that client at that trigger time.
pub const OUTPUT_EXAMPLE: &str = r#"{"restaurant_id":"123e4567-e89b-12d3-a456-426614174000","adv_campaign_id":"123e4567-e89b-12d3-a456-426614174003","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1659203516,"adv_campaign_datetime_end":2659207116,"client_id":"023e4567-e89b-12d3-a456-426614174000","datetime_created":1659131516,"trigger_datetime_created":1659304828}"#;

/// The client and trigger time of [`OUTPUT_EXAMPLE`].
pub const OUTPUT_EXAMPLE_CLIENT: &str = "023e4567-e89b-12d3-a456-426614174000";
pub const OUTPUT_EXAMPLE_TRIGGER: i64 = 1_659_304_828;

/// The brief's subscriber table, owned by the app.
pub const SUBSCRIBERS_RESTAURANTS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL,
    client_id varchar NOT NULL,
    restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
);";

/// The brief's feedback table: one row per notification, `feedback` filled in later by the app.
pub const SUBSCRIBERS_FEEDBACK_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.subscribers_feedback (
    id serial4 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL,
    feedback varchar NULL,
    CONSTRAINT id_pk PRIMARY KEY (id)
);";

/// The ten columns of `subscribers_feedback` that hold a notification, in the order of the output
/// JSON. A macro so that SQL text can be built from it with `concat!`.
#[macro_export]
macro_rules! notification_columns {
    () => {
        "restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
         adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, \
         client_id, datetime_created, trigger_datetime_created"
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_output_fields_in_order() {
        let example: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(OUTPUT_EXAMPLE).unwrap();
        let fields: Vec<&str> = example.keys().map(String::as_str).collect();
        let columns: Vec<&str> = notification_columns!().split(", ").collect();
        let mut fields = fields;
        let mut sorted = columns.clone();
        fields.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(fields, sorted);
        assert!(OUTPUT_EXAMPLE.starts_with(&format!("{{\"{}\"", columns[0])));
        let positions: Vec<usize> = columns
            .iter()
            .map(|c| OUTPUT_EXAMPLE.find(&format!("\"{c}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }

    #[test]
    fn every_notification_column_is_in_the_feedback_table() {
        for column in notification_columns!().split(", ") {
            assert!(
                SUBSCRIBERS_FEEDBACK_DDL.contains(&format!("    {column} ")),
                "{column}"
            );
        }
    }
}
