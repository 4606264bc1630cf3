//! The campaign as it arrives from Kafka: parsing and validation. (Where a campaign is in its
//! window, and what that means, is the lifecycle's: `lifecycle::rules`.)
//!
//! Pure logic with no I/O, so every rule about what the service accepts is tested here. The
//! input is untrusted: nothing in this module panics on any byte sequence.

use serde::Deserialize;

use crate::metrics::RejectCode;

/// Latest timestamp accepted: 9999-12-31T23:59:59Z. Anything larger is a unit mistake
/// (milliseconds instead of seconds) or garbage.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// Longest `restaurant_id` and `adv_campaign_id` accepted, in bytes. Both are part of the key that
/// keeps notifications unique in Postgres, whose index refuses entries over 2 704 bytes: a longer
/// id would be refused by the database every time it is written. The contract's ids are UUIDs
/// (36 bytes).
pub const MAX_ID_BYTES: usize = 256;

/// A validated campaign: every field present, typed, non-empty, and `start <= end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    pub adv_campaign_content: String,
    pub adv_campaign_owner: String,
    pub adv_campaign_owner_contact: String,
    pub adv_campaign_datetime_start: i64,
    pub adv_campaign_datetime_end: i64,
    pub datetime_created: i64,
}

impl Campaign {
    /// The campaign as the input carries it: the brief's eight fields.
    pub fn input_json(&self) -> String {
        serde_json::json!({
            "restaurant_id": self.restaurant_id,
            "adv_campaign_id": self.adv_campaign_id,
            "adv_campaign_content": self.adv_campaign_content,
            "adv_campaign_owner": self.adv_campaign_owner,
            "adv_campaign_owner_contact": self.adv_campaign_owner_contact,
            "adv_campaign_datetime_start": self.adv_campaign_datetime_start,
            "adv_campaign_datetime_end": self.adv_campaign_datetime_end,
            "datetime_created": self.datetime_created,
        })
        .to_string()
    }
}

/// Why a message was not used. The label is a bounded metric label; the detail goes to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLarge { bytes: usize, limit: usize },
    TooLong { field: &'static str, bytes: usize },
    NotUtf8,
    NotJson(String),
    MissingField(&'static str),
    WrongType { field: &'static str, detail: String },
    EmptyField(&'static str),
    InvalidChar(&'static str),
    OutOfRange { field: &'static str, value: i64 },
    StartAfterEnd { start: i64, end: i64 },
}

impl Rejection {
    /// The metric label: a short fixed code, never the message text.
    pub fn code(&self) -> RejectCode {
        match self {
            Rejection::TooLarge { .. } => RejectCode::TooLarge,
            Rejection::TooLong { .. } => RejectCode::TooLong,
            Rejection::NotUtf8 => RejectCode::NotUtf8,
            Rejection::NotJson(_) => RejectCode::NotJson,
            Rejection::MissingField(_) => RejectCode::MissingField,
            Rejection::WrongType { .. } => RejectCode::WrongType,
            Rejection::EmptyField(_) => RejectCode::EmptyField,
            Rejection::InvalidChar(_) => RejectCode::InvalidChar,
            Rejection::OutOfRange { .. } => RejectCode::OutOfRange,
            Rejection::StartAfterEnd { .. } => RejectCode::StartAfterEnd,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::TooLarge { bytes, limit } => {
                write!(f, "message is {bytes} bytes, more than the {limit} allowed")
            }
            Rejection::TooLong { field, bytes } => write!(
                f,
                "field {field} is {bytes} bytes long, more than the {MAX_ID_BYTES} allowed"
            ),
            Rejection::NotUtf8 => write!(f, "message is not valid UTF-8"),
            Rejection::NotJson(e) => write!(f, "message is not a JSON object: {e}"),
            Rejection::MissingField(field) => write!(f, "field {field} is missing"),
            Rejection::WrongType { field, detail } => {
                write!(f, "field {field} has the wrong type: {detail}")
            }
            Rejection::EmptyField(field) => write!(f, "field {field} is empty"),
            Rejection::InvalidChar(field) => {
                write!(f, "field {field} contains a NUL character")
            }
            Rejection::OutOfRange { field, value } => write!(
                f,
                "field {field} = {value} is not a unix time in seconds between 0 and {MAX_TIMESTAMP}"
            ),
            Rejection::StartAfterEnd { start, end } => write!(
                f,
                "adv_campaign_datetime_start {start} is after adv_campaign_datetime_end {end}"
            ),
        }
    }
}

/// Longest key part of the `key:json` form accepted, in bytes: it names the message (the brief's
/// sample has `first_message`), it is not a payload.
pub const MAX_INLINE_KEY_BYTES: usize = MAX_ID_BYTES;

/// Parses and validates one message as it came from Kafka: its record key and its value, plain
/// JSON or the `key:json` form. The size limit counts everything the service holds of the
/// message (the record key and the whole value, inline key included), so no part of it can
/// carry more than `max_bytes` past the check.
pub fn parse_message(
    key: Option<&[u8]>,
    value: &[u8],
    max_bytes: usize,
) -> Result<Campaign, Rejection> {
    let bytes = key.map_or(0, <[u8]>::len).saturating_add(value.len());
    if bytes > max_bytes {
        return Err(Rejection::TooLarge {
            bytes,
            limit: max_bytes,
        });
    }
    let (inline_key, json) = split_inline_key(value);
    if let Some(inline_key) = inline_key.filter(|k| k.len() > MAX_INLINE_KEY_BYTES) {
        return Err(Rejection::TooLong {
            field: "key (of the key:json form)",
            bytes: inline_key.len(),
        });
    }
    parse_campaign(json, max_bytes)
}

/// Splits the `key:json` form the brief uses for its sample (what `kcat -K:` would have sent as
/// one value). A value that already starts with `{` is returned whole.
pub fn split_inline_key(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    if value.get(start) == Some(&b'{') {
        return (None, value);
    }
    match value.iter().position(|&b| b == b':') {
        Some(colon) => (Some(&value[..colon]), &value[colon + 1..]),
        None => (None, value),
    }
}

// Every field is read as a raw JSON value first, so that a missing field and a mistyped one give
// different, precise reasons instead of serde's single generic error.
#[derive(Deserialize)]
struct RawCampaign<'a> {
    #[serde(borrow, default)]
    restaurant_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_content: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_owner: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_owner_contact: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_datetime_start: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    adv_campaign_datetime_end: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    datetime_created: Option<&'a serde_json::value::RawValue>,
}

/// Parses and validates the JSON of a message (after any inline key was split off; see
/// [`parse_message`], which bounds the whole message).
pub fn parse_campaign(json: &[u8], max_bytes: usize) -> Result<Campaign, Rejection> {
    if json.len() > max_bytes {
        return Err(Rejection::TooLarge {
            bytes: json.len(),
            limit: max_bytes,
        });
    }
    let text = std::str::from_utf8(json).map_err(|_| Rejection::NotUtf8)?;
    // serde would read a struct from an array too; a campaign is an object.
    if !text.trim_start().starts_with('{') {
        return Err(Rejection::NotJson("expected a JSON object".into()));
    }
    let raw: RawCampaign<'_> =
        serde_json::from_str(text).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let campaign = Campaign {
        restaurant_id: id_field("restaurant_id", raw.restaurant_id)?,
        adv_campaign_id: id_field("adv_campaign_id", raw.adv_campaign_id)?,
        adv_campaign_content: text_field("adv_campaign_content", raw.adv_campaign_content)?,
        adv_campaign_owner: text_field("adv_campaign_owner", raw.adv_campaign_owner)?,
        adv_campaign_owner_contact: text_field(
            "adv_campaign_owner_contact",
            raw.adv_campaign_owner_contact,
        )?,
        adv_campaign_datetime_start: time_field(
            "adv_campaign_datetime_start",
            raw.adv_campaign_datetime_start,
        )?,
        adv_campaign_datetime_end: time_field(
            "adv_campaign_datetime_end",
            raw.adv_campaign_datetime_end,
        )?,
        datetime_created: time_field("datetime_created", raw.datetime_created)?,
    };
    if campaign.adv_campaign_datetime_start > campaign.adv_campaign_datetime_end {
        return Err(Rejection::StartAfterEnd {
            start: campaign.adv_campaign_datetime_start,
            end: campaign.adv_campaign_datetime_end,
        });
    }
    Ok(campaign)
}

fn present<'a>(
    field: &'static str,
    raw: Option<&'a serde_json::value::RawValue>,
) -> Result<&'a str, Rejection> {
    match raw {
        Some(v) if v.get() != "null" => Ok(v.get()),
        _ => Err(Rejection::MissingField(field)),
    }
}

fn text_field(
    field: &'static str,
    raw: Option<&serde_json::value::RawValue>,
) -> Result<String, Rejection> {
    let json = present(field, raw)?;
    let value: String = serde_json::from_str(json).map_err(|_| Rejection::WrongType {
        field,
        detail: format!("expected a string, got {}", json_kind(json)),
    })?;
    if value.trim().is_empty() {
        return Err(Rejection::EmptyField(field));
    }
    // Postgres text cannot hold NUL; letting one through would make the row fail forever.
    if value.contains('\0') {
        return Err(Rejection::InvalidChar(field));
    }
    Ok(value)
}

/// A text field that is part of the notification key: bounded in length.
fn id_field(
    field: &'static str,
    raw: Option<&serde_json::value::RawValue>,
) -> Result<String, Rejection> {
    let value = text_field(field, raw)?;
    if value.len() > MAX_ID_BYTES {
        return Err(Rejection::TooLong {
            field,
            bytes: value.len(),
        });
    }
    Ok(value)
}

fn time_field(
    field: &'static str,
    raw: Option<&serde_json::value::RawValue>,
) -> Result<i64, Rejection> {
    let json = present(field, raw)?;
    let wrong_type = || Rejection::WrongType {
        field,
        detail: format!(
            "expected an integer of unix seconds, got {}",
            json_kind(json)
        ),
    };
    if !json.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(wrong_type());
    }
    let value: i64 = match json.parse::<i64>() {
        Ok(v) => v,
        // All digits but not an i64: an integer too large for any timestamp.
        Err(_) => {
            return Err(Rejection::OutOfRange {
                field,
                value: if json.starts_with('-') {
                    i64::MIN
                } else {
                    i64::MAX
                },
            })
        }
    };
    if !(0..=MAX_TIMESTAMP).contains(&value) {
        return Err(Rejection::OutOfRange { field, value });
    }
    Ok(value)
}

fn json_kind(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::contract::BRIEF_SAMPLE as SAMPLE;

    fn sample_json() -> &'static [u8] {
        split_inline_key(SAMPLE.as_bytes()).1
    }

    fn with(field: &str, value: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(sample_json()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(value).unwrap();
        v[field] = parsed;
        serde_json::to_vec(&v).unwrap()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(sample_json()).unwrap();
        v.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn brief_sample_parses_with_its_inline_key() {
        let (key, json) = split_inline_key(SAMPLE.as_bytes());
        assert_eq!(key, Some(&b"first_message"[..]));
        let c = parse_campaign(json, 65536).unwrap();
        assert_eq!(c.restaurant_id, "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(c.adv_campaign_id, "123e4567-e89b-12d3-a456-426614174003");
        assert_eq!(c.adv_campaign_content, "first campaign");
        assert_eq!(c.adv_campaign_owner, "Ivanov Ivan Ivanovich");
        assert_eq!(c.adv_campaign_owner_contact, "iiivanov@restaurant.ru");
        assert_eq!(c.adv_campaign_datetime_start, 1659203516);
        assert_eq!(c.adv_campaign_datetime_end, 2659207116);
        assert_eq!(c.datetime_created, 1659131516);
    }

    #[test]
    fn plain_json_value_has_no_inline_key() {
        let (key, json) = split_inline_key(b"  {\"a\":1}");
        assert_eq!(key, None);
        assert_eq!(json, b"  {\"a\":1}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = parse_campaign(&with("extra", "[1,2]"), 65536).unwrap();
        assert_eq!(c.adv_campaign_content, "first campaign");
    }

    #[test]
    fn each_missing_field_is_named() {
        for field in [
            "restaurant_id",
            "adv_campaign_id",
            "adv_campaign_content",
            "adv_campaign_owner",
            "adv_campaign_owner_contact",
            "adv_campaign_datetime_start",
            "adv_campaign_datetime_end",
            "datetime_created",
        ] {
            assert_eq!(
                parse_campaign(&without(field), 65536),
                Err(Rejection::MissingField(field))
            );
            assert_eq!(
                parse_campaign(&with(field, "null"), 65536),
                Err(Rejection::MissingField(field))
            );
        }
    }

    #[test]
    fn mistyped_fields_are_rejected() {
        let cases = [
            ("restaurant_id", "123"),
            ("adv_campaign_content", "{\"a\":1}"),
            ("adv_campaign_datetime_start", "\"1659203516\""),
            ("adv_campaign_datetime_end", "2659207116.5"),
            ("datetime_created", "1e9"),
            ("datetime_created", "true"),
        ];
        for (field, value) in cases {
            let err = parse_campaign(&with(field, value), 65536).unwrap_err();
            assert_eq!(err.code(), RejectCode::WrongType, "{field}={value}: {err}");
        }
    }

    #[test]
    fn ids_longer_than_the_key_allows_are_rejected() {
        let at_limit = format!("\"{}\"", "é".repeat(MAX_ID_BYTES / 2));
        assert!(parse_campaign(&with("adv_campaign_id", &at_limit), 65536).is_ok());
        let over = format!("\"{}\"", "x".repeat(MAX_ID_BYTES + 1));
        for field in ["restaurant_id", "adv_campaign_id"] {
            assert_eq!(
                parse_campaign(&with(field, &over), 65536),
                Err(Rejection::TooLong {
                    field,
                    bytes: MAX_ID_BYTES + 1
                })
            );
        }
        // Other text is bounded by the message size only.
        assert!(parse_campaign(&with("adv_campaign_owner", &over), 65536).is_ok());
    }

    #[test]
    fn empty_and_nul_strings_are_rejected() {
        assert_eq!(
            parse_campaign(&with("restaurant_id", "\"  \""), 65536),
            Err(Rejection::EmptyField("restaurant_id"))
        );
        assert_eq!(
            parse_campaign(&with("adv_campaign_content", "\"a\\u0000b\""), 65536),
            Err(Rejection::InvalidChar("adv_campaign_content"))
        );
    }

    #[test]
    fn timestamps_out_of_range_are_rejected() {
        for value in [
            "-1",
            "253402300800",
            "99999999999999999999999",
            "-99999999999999999999",
        ] {
            // Spliced as text: a JSON library would turn the huge ones into floats.
            let json = String::from_utf8(sample_json().to_vec())
                .unwrap()
                .replace("2659207116", value);
            let err = parse_campaign(json.as_bytes(), 65536).unwrap_err();
            assert_eq!(err.code(), RejectCode::OutOfRange, "{value}: {err}");
        }
    }

    #[test]
    fn start_after_end_is_rejected() {
        let json = with("adv_campaign_datetime_start", "2659207117");
        assert_eq!(
            parse_campaign(&json, 65536),
            Err(Rejection::StartAfterEnd {
                start: 2659207117,
                end: 2659207116
            })
        );
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let inputs: [&[u8]; 7] = [
            b"",
            b"not json",
            b"[1,2,3]",
            b"{\"restaurant_id\":",
            b"\xff\xfe\xfd",
            b"null",
            b"{}",
        ];
        for input in inputs {
            assert!(parse_campaign(input, 65536).is_err());
        }
        let deep = "[".repeat(100_000);
        assert_eq!(
            parse_campaign(deep.as_bytes(), 1 << 20).unwrap_err().code(),
            RejectCode::NotJson
        );
    }

    #[test]
    fn the_size_limit_counts_the_record_key_and_the_inline_key_too() {
        let json = sample_json();
        let limit = json.len() + 64;
        assert!(parse_message(None, json, limit).is_ok());
        assert!(parse_message(Some(&[b'k'; 64]), json, limit).is_ok());
        let reason = parse_message(Some(&[b'k'; 65]), json, limit).unwrap_err();
        assert_eq!(
            reason,
            Rejection::TooLarge {
                bytes: json.len() + 65,
                limit
            }
        );
        let inline = [&[b'k'; 64][..], b":", json].concat();
        assert_eq!(
            parse_message(None, &inline, limit).unwrap_err().code(),
            RejectCode::TooLarge,
            "the inline key and its colon count"
        );
        let big_key = [&vec![b'k'; 900_000][..], b":", json].concat();
        assert_eq!(
            parse_message(None, &big_key, 65536).unwrap_err().code(),
            RejectCode::TooLarge
        );
    }

    #[test]
    fn an_inline_key_longer_than_an_id_is_rejected() {
        let at_limit = [&[b'k'; MAX_INLINE_KEY_BYTES][..], b":", sample_json()].concat();
        assert!(parse_message(None, &at_limit, 65536).is_ok());
        let over = [&[b'k'; MAX_INLINE_KEY_BYTES + 1][..], b":", sample_json()].concat();
        let reason = parse_message(None, &over, 65536).unwrap_err();
        assert_eq!(reason.code(), RejectCode::TooLong);
        assert!(reason.to_string().contains("key:json"), "{reason}");
        assert!(parse_message(None, SAMPLE.as_bytes(), 65536).is_ok());
    }

    #[test]
    fn oversized_message_is_rejected_before_parsing() {
        let big = vec![b'{'; 70_000];
        assert_eq!(
            parse_campaign(&big, 65536).unwrap_err().code(),
            RejectCode::TooLarge
        );
    }
}
