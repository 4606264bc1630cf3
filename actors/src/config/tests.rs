use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::lifecycle::Window;

const MINIMAL: &str = r#"
    [kafka]
    brokers = "127.0.0.1:9092"
    input_topic = "in"
    output_topic = "out"
    group_id = "g"
    [postgres]
    url = "postgres://postgres@127.0.0.1:5432/postgres"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(
        text,
        "test.toml",
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// Every value of `value` under its dotted key (sections flattened).
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// A value as docs/configuration.md writes it in its default column.
fn as_documented(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) if s.is_empty() => "empty".into(),
        toml::Value::String(s) => format!("`{s}`"),
        other => other.to_string(),
    }
}

/// Keys whose shipped value is an example rather than a default.
const EXAMPLES: [&str; 7] = [
    "kafka.brokers",
    "kafka.input_topic",
    "kafka.output_topic",
    "kafka.group_id",
    "kafka.dead_letter_topic",
    "kafka.consumer.fetch.wait.max.ms",
    "postgres.url",
];

#[test]
fn the_shipped_config_and_the_docs_say_the_defaults() {
    let defaults = toml::Value::try_from(load(MINIMAL, &[]).unwrap()).unwrap();
    let mut default_of = BTreeMap::new();
    flatten("", &defaults, &mut default_of);
    let mut wrong = shipped_config_mismatches(&default_of);
    let rows = documented_defaults(include_str!("../../../docs/configuration.md"));
    wrong.extend(docs_mismatches(&default_of, &rows));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Each key config.toml sets to another value than its default, or that has no default.
fn shipped_config_mismatches(default_of: &BTreeMap<String, toml::Value>) -> Vec<String> {
    let shipped: toml::Table = include_str!("../../../config.toml").parse().unwrap();
    let shipped = toml::Value::Table(shipped);
    let mut shipped_of = BTreeMap::new();
    flatten("", &shipped, &mut shipped_of);

    let mut wrong = Vec::new();
    for (key, value) in &shipped_of {
        if EXAMPLES.contains(&key.as_str()) {
            continue;
        }
        match default_of.get(key) {
            Some(default) if default == value => {}
            Some(default) => wrong.push(format!("config.toml {key} = {value}, default {default}")),
            None => wrong.push(format!("config.toml {key}: no such key with a default")),
        }
    }
    wrong
}

/// Each key docs/configuration.md has a row for, with that row's default column.
fn documented_defaults(docs: &str) -> BTreeMap<String, &str> {
    // A row's keys (`kafka.security.username`, `.password`: the others share the first's
    // section) and its default column.
    let mut rows: BTreeMap<String, &str> = BTreeMap::new();
    for line in docs.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let mut cells = row.splitn(3, " | ");
        let (Some(keys), Some(default)) = (cells.next(), cells.next()) else {
            continue;
        };
        let keys: Vec<&str> = keys.split(", ").map(|k| k.trim_matches('`')).collect();
        let section = keys[0].rsplit_once('.').map_or("", |(s, _)| s);
        for k in &keys {
            let key = match k.strip_prefix('.') {
                Some(last) => format!("{section}.{last}"),
                None => k.to_string(),
            };
            // A row of several keys gives the default of none of them.
            rows.insert(key, if keys.len() > 1 { "" } else { default.trim() });
        }
    }
    rows
}

/// Each key without a row, each row that shows another default, and each row that calls a key
/// with a default required.
fn docs_mismatches(
    default_of: &BTreeMap<String, toml::Value>,
    rows: &BTreeMap<String, &str>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, default) in default_of {
        let Some(documented) = rows.get(key) else {
            wrong.push(format!("docs/configuration.md: no row for {key}"));
            continue;
        };
        let expected = as_documented(default);
        let shown = match *documented {
            "" => continue,
            "required" if EXAMPLES.contains(&key.as_str()) => continue,
            d => d,
        };
        if shown != expected && !(expected == "empty" && shown == "the system's") {
            wrong.push(format!(
                "docs/configuration.md {key}: {shown}, default {expected}"
            ));
        }
    }
    for (key, documented) in rows {
        if *documented == "required" && !EXAMPLES.contains(&key.as_str()) {
            wrong.push(format!(
                "docs/configuration.md {key}: required, but it has a default"
            ));
        }
    }
    wrong
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(c.cache.refresh_interval_secs, Duration::from_secs(60));
    assert_eq!(c.http.listen, "0.0.0.0:9898");
    assert_eq!(c.kafka.max_in_flight_campaigns, 2048);
}

#[test]
fn missing_key_is_named() {
    let text = MINIMAL.replace("group_id = \"g\"", "");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.starts_with("config key kafka.group_id:"), "{err}");
    let err = load("[kafka]\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("config key kafka.brokers:"), "{err}");
    let err = load("", &[]).unwrap_err().to_string();
    assert!(err.starts_with("config key kafka:"), "{err}");
}

#[test]
fn unknown_key_is_rejected_with_its_place() {
    let text = format!("{MINIMAL}\n[cache]\nrefresh_interval = 5\n");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(
        err.contains("cache") && err.contains("refresh_interval"),
        "{err}"
    );
}

#[test]
fn mistyped_value_is_named() {
    let text = format!("{MINIMAL}\n[cache]\nrefresh_interval_secs = \"soon\"\n");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("cache.refresh_interval_secs"), "{err}");
}

#[test]
fn env_overrides_strings_numbers_and_new_sections() {
    let c = load(
        MINIMAL,
        &[
            (
                "CAMPAIGN_NOTIFIER__KAFKA__BROKERS",
                "kafka-1:9092,kafka-2:9092",
            ),
            ("CAMPAIGN_NOTIFIER__CACHE__REFRESH_INTERVAL_SECS", "5"),
            (
                "CAMPAIGN_NOTIFIER__POSTGRES__URL",
                "postgres://app:s3cret@db:5432/app",
            ),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "kafka-1:9092,kafka-2:9092");
    assert_eq!(c.cache.refresh_interval_secs, Duration::from_secs(5));
    assert_eq!(c.postgres.url, "postgres://app:s3cret@db:5432/app");
}

#[test]
fn env_overrides_are_read_as_the_type_of_the_key_they_set() {
    let c = load(
        MINIMAL,
        &[
            ("CAMPAIGN_NOTIFIER__KAFKA__GROUP_ID", "2024"),
            ("CAMPAIGN_NOTIFIER__KAFKA__INPUT_TOPIC", "true"),
            ("CAMPAIGN_NOTIFIER__KAFKA__OUTPUT_TOPIC", "1.5"),
            ("CAMPAIGN_NOTIFIER__POSTGRES__CREATE_SCHEMA", "false"),
            ("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "7"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.group_id, "2024");
    assert_eq!(c.kafka.input_topic, "true");
    assert_eq!(c.kafka.output_topic, "1.5");
    assert!(!c.postgres.create_schema);
    assert_eq!(c.postgres.connect_timeout_secs, Duration::from_secs(7));
}

#[test]
fn env_override_of_the_wrong_type_names_the_key_and_the_variable() {
    let err = load(
        MINIMAL,
        &[("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "soon")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("config key postgres.connect_timeout_secs:"),
        "{err}"
    );
    assert!(
        err.ends_with("(set by CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS)"),
        "{err}"
    );
}

#[test]
fn env_override_of_unknown_key_is_an_error() {
    let err = load(MINIMAL, &[("CAMPAIGN_NOTIFIER__KAFKA__BROKER", "x:1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("kafka.broker"), "{err}");
}

#[test]
fn cross_field_rules() {
    let same = MINIMAL.replace("output_topic = \"out\"", "output_topic = \"in\"");
    assert!(load(&same, &[])
        .unwrap_err()
        .to_string()
        .contains("kafka.output_topic"));
    let bad_listen = format!("{MINIMAL}\n[http]\nlisten = \"nowhere\"\n");
    assert!(load(&bad_listen, &[])
        .unwrap_err()
        .to_string()
        .contains("http.listen"));
    let tiny_budget = format!("{MINIMAL}\n[writers]\nmax_notifications_in_flight = 999\n");
    assert!(load(&tiny_budget, &[])
        .unwrap_err()
        .to_string()
        .contains("writers.max_notifications_in_flight"));
    let busy_poll = format!("{MINIMAL}\n[lifecycle]\npoll_interval_ms = 1\n");
    assert!(load(&busy_poll, &[])
        .unwrap_err()
        .to_string()
        .contains("lifecycle.poll_interval_ms"));
}

#[test]
fn quiet_hours_need_a_window_and_a_zone_that_exist() {
    let with = |window: &str, zone: &str| {
        let text =
            format!("{MINIMAL}\n[limits]\nquiet_hours = \"{window}\"\ntime_zone = \"{zone}\"\n");
        load(&text, &[])
    };
    let c = with("22:00-08:00", "Europe/Moscow").unwrap();
    assert_eq!(c.settings().quiet.describe(), "22:00-08:00 Europe/Moscow");
    assert!(
        !load(MINIMAL, &[]).unwrap().settings().quiet.is_on(),
        "off by default"
    );
    for (window, zone, key) in [
        ("22:00", "UTC", "limits.quiet_hours"),
        ("10:00-10:00", "UTC", "limits.quiet_hours"),
        ("22:00-08:00", "Europe/Mosco", "limits.time_zone"),
    ] {
        let err = with(window, zone).unwrap_err().to_string();
        assert!(err.starts_with(&format!("config key {key}: ")), "{err}");
    }
    let env = [("CAMPAIGN_NOTIFIER__LIMITS__QUIET_HOURS", "23:30-07:00")];
    let c = load(MINIMAL, &env).unwrap();
    assert_eq!(c.settings().quiet.describe(), "23:30-07:00 UTC");
}

#[test]
fn overrides_that_would_break_the_guarantees_are_refused() {
    let text = format!("{MINIMAL}\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n");
    let text = text.replace("[postgres]", "[kafka.producer]\n[postgres]");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("enable.auto.offset.store"), "{err}");
    let ok = format!("{MINIMAL}\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"10\"\n");
    load(&ok, &[]).unwrap();
}

#[test]
fn settings_carry_the_config_to_every_component() {
    let text = format!(
        "{MINIMAL}\n[kafka.producer]\n\"linger.ms\" = \"1\"\n[writers]\nrestart_limit = 7\n"
    )
    .replace(
        "[postgres]",
        "dead_letter_topic = \"dlq\"\norphaned_partition_secs = 0\n[postgres]",
    );
    let s = load(&text, &[]).unwrap().settings();
    assert_eq!(s.reader.topic, "in");
    assert_eq!(s.reader.orphan_stall, None);
    assert_eq!(s.producer.overrides, vec![("linger.ms".into(), "1".into())]);
    assert_eq!(s.dead_letter_topic.as_deref(), Some("dlq"));
    assert_eq!(s.writers.restart.limit, Some(7));
    assert_eq!(s.max_notifications_in_flight, 200_000);
    assert_eq!(s.ledger_restart, s.writers.restart);
    assert_eq!(
        s.cache_restart.limit, None,
        "the cache never stops the service"
    );
    assert_eq!(s.grace_period, Duration::from_secs(30));
    let none = load(MINIMAL, &[]).unwrap().settings();
    assert_eq!(none.dead_letter_topic, None);
    assert_eq!(none.reader.orphan_stall, Some(Duration::from_secs(60)));
    assert_eq!(
        none.lifecycle.window,
        Window {
            clock_skew_secs: 3,
            end_grace_secs: 0
        }
    );
    assert_eq!(none.lifecycle.poll_interval, Duration::from_millis(250));
    let lifecycle = format!(
        "{MINIMAL}\n[lifecycle]\nclock_skew_secs = 10\nend_grace_secs = 60\npoll_interval_ms = 100\n"
    );
    let l = load(&lifecycle, &[]).unwrap().settings().lifecycle;
    assert_eq!(
        (l.window.clock_skew_secs, l.window.end_grace_secs),
        (10, 60)
    );
    assert_eq!(l.poll_interval, Duration::from_millis(100));
}

fn with_security(section: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load(&format!("{MINIMAL}\n[kafka.security]\n{section}"), env)
}

#[test]
fn kafka_security_reaches_every_client_and_its_password_is_never_shown() {
    let ca = std::env::temp_dir().join(format!("cn-config-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "not checked here").unwrap();
    let c = with_security(
        &format!(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             username = \"svc\"\nca_file = \"{}\"\n",
            ca.display()
        ),
        &[("CAMPAIGN_NOTIFIER__KAFKA__SECURITY__PASSWORD", "12345")],
    )
    .unwrap();
    let settings = c.settings();
    let expected = [
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "svc"),
        ("sasl.password", "12345"),
        ("ssl.ca.location", &ca.display().to_string()),
        ("ssl.endpoint.identification.algorithm", "https"),
    ];
    for overrides in [&settings.reader.overrides, &settings.producer.overrides] {
        for (key, value) in expected {
            assert!(
                overrides.iter().any(|(k, v)| k == key && v == value),
                "{key} missing"
            );
        }
    }
    // Recovery's scan and the start-up check take the producer's connection settings.
    let shared: Vec<_> = settings.producer.connection_overrides().collect();
    assert!(shared.contains(&("sasl.password", "12345")));
    assert!(!format!("{c:?}").contains("12345"));
    assert!(!format!("{:?}", settings.producer).contains("12345"));
    assert!(!format!("{:?}", settings.reader).contains("12345"));
    assert!(format!("{:?}", settings.reader).contains(r#"("sasl.password", "***")"#));
    assert!(!c.kafka.security.describe().contains("12345"));
    assert!(c.kafka.security.describe().contains("password=***"));
    let _ = std::fs::remove_file(ca);
}

#[test]
fn kafka_password_file_is_read_without_its_final_newline() {
    let file = std::env::temp_dir().join(format!("cn-config-pw-{}", std::process::id()));
    std::fs::write(&file, "s3cret\n").unwrap();
    let section = format!(
        "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"svc\"\n\
         password_file = \"{}\"\n",
        file.display()
    );
    let c = with_security(&section, &[]).unwrap();
    assert_eq!(c.kafka.security.password.expose(), "s3cret");
    assert!(c
        .kafka
        .security
        .describe()
        .contains(&format!("(from {})", file.display())));
    let _ = std::fs::remove_file(&file);
    let err = with_security(&section, &[]).unwrap_err().to_string();
    assert!(
        err.starts_with("config key kafka.security.password_file: cannot read"),
        "{err}"
    );
}

#[test]
fn kafka_security_rules() {
    let cases = [
        ("protocol = \"sasl_ssl\"\n", "kafka.security.sasl_mechanism"),
        (
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\npassword = \"p\"\n",
            "kafka.security.username",
        ),
        (
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n",
            "kafka.security.password",
        ),
        (
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n\
             password = \"p\"\npassword_file = \"/p\"\n",
            "kafka.security.password",
        ),
        ("username = \"u\"\n", "kafka.security.protocol"),
        (
            "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"GSSAPI\"\n",
            "kafka.security.sasl_mechanism",
        ),
        ("protocol = \"tls\"\n", "kafka.security.protocol"),
        (
            "protocol = \"ssl\"\nca_file = \"/no/such/ca.pem\"\n",
            "kafka.security.ca_file",
        ),
        ("ca_file = \"/etc/hostname\"\n", "kafka.security.ca_file"),
        (
            "protocol = \"ssl\"\ncertificate_file = \"/etc/hostname\"\n",
            "kafka.security.key_file",
        ),
    ];
    for (section, key) in cases {
        let err = with_security(section, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("config key {key}")),
            "{section}: {err}"
        );
    }
    let err = load(
        &format!("{MINIMAL}\n[kafka.producer]\n\"sasl.password\" = \"p\"\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("is set by [kafka.security]"), "{err}");
    // Upper-case names as librdkafka writes them are taken too.
    let c = with_security("protocol = \"SSL\"\nverify_hostname = false\n", &[]).unwrap();
    assert!(c.settings().producer.overrides.contains(&(
        "ssl.endpoint.identification.algorithm".into(),
        "none".into()
    )));
}

#[test]
fn librdkafka_properties_librdkafka_refuses_are_config_errors() {
    let cases = [
        (
            "[kafka.producer]\n\"compression.type\" = \"bogus\"\n",
            "kafka.producer",
        ),
        (
            "[kafka.consumer]\n\"no.such.property\" = \"1\"\n",
            "kafka.consumer",
        ),
        (
            "[kafka.consumer]\n\"fetch.wait.max.ms\" = \"soon\"\n",
            "kafka.consumer",
        ),
    ];
    for (section, key) in cases {
        let err = load(&format!("{MINIMAL}\n{section}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("config key {key}:")),
            "{section}: {err}"
        );
    }
}

#[test]
fn the_settle_time_follows_the_producer_timeout_in_force_and_no_limit_is_refused() {
    let timeout_of = |producer: &str| {
        load(&format!("{MINIMAL}\n[kafka.producer]\n{producer}"), &[])
            .map(|c| c.settings().producer.effective_message_timeout())
    };
    assert_eq!(timeout_of("").unwrap(), Some(Duration::from_secs(30)));
    // librdkafka's other name of the same property counts, and the last one set wins.
    assert_eq!(
        timeout_of("\"delivery.timeout.ms\" = \"90000\"\n").unwrap(),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        timeout_of("\"delivery.timeout.ms\" = \"90000\"\n\"message.timeout.ms\" = \"45000\"\n")
            .unwrap(),
        Some(Duration::from_secs(45))
    );
    let err = timeout_of("\"message.timeout.ms\" = \"0\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no limit"), "{err}");
}

#[test]
fn the_lease_is_bounded_and_the_old_takeover_key_is_accepted() {
    let c = load(
        &format!("{MINIMAL}\n[ledger]\ntakeover_after_secs = 120\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.settings().lease_ttl, Duration::from_secs(10));
    assert_eq!(c.ledger.takeover_after_secs, Some(120));
    for ttl in [0, 2, 301] {
        let err = load(
            &format!("{MINIMAL}\n[ledger]\nlease_ttl_secs = {ttl}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config key ledger.lease_ttl_secs:"),
            "{err}"
        );
    }
    let err = load(
        &format!("{MINIMAL}\n[http]\nliveness_timeout_secs = 15\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("config key http.liveness_timeout_secs:"),
        "{err}"
    );
}

#[test]
fn transactions_give_each_owner_its_own_id_which_no_override_may_set() {
    let c = load(
        MINIMAL,
        &[("CAMPAIGN_NOTIFIER__KAFKA__TRANSACTIONS", "true")],
    )
    .unwrap();
    let ids = c.settings().transactional_ids.expect("transactional");
    assert_eq!(
        ids.of(7),
        format!("campaign-notifier-{}-owner-7", c.kafka.group_id)
    );
    assert_eq!(
        load(MINIMAL, &[]).unwrap().settings().transactional_ids,
        None
    );
    let err = load(
        &format!("{MINIMAL}\n[kafka.producer]\n\"transactional.id\" = \"mine\"\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("set by the service"), "{err}");
}

#[test]
fn shipped_config_file_is_valid() {
    let text = include_str!("../../../config.toml");
    load(text, &[]).unwrap();
}

#[test]
fn the_per_client_cap_is_off_by_default_and_on_with_its_window_once_set() {
    let off = load(MINIMAL, &[]).unwrap().settings();
    assert_eq!(off.per_client_cap, None, "0, the default, is no cap");
    assert_eq!(off.lifecycle.retain.cap_window, None);
    let text = format!("{MINIMAL}\n[limits]\nper_client_max = 3\n");
    let on = load(&text, &[]).unwrap().settings();
    assert_eq!(
        on.per_client_cap,
        Some(crate::sinks::pg_writer::PerClientCap {
            max: 3,
            window_secs: 86_400
        })
    );
    assert_eq!(
        on.lifecycle.retain.cap_window,
        Some(Duration::from_secs(86_400)),
        "housekeeping trims the clients to the same window"
    );
    let env = [("CAMPAIGN_NOTIFIER__LIMITS__PER_CLIENT_WINDOW_SECS", "3600")];
    let hour = load(&text, &env).unwrap().settings().per_client_cap;
    assert_eq!(hour.map(|c| c.window_secs), Some(3_600));
}

#[test]
fn a_cap_without_a_window_or_beyond_reason_is_refused_with_the_key() {
    let no_window =
        format!("{MINIMAL}\n[limits]\nper_client_max = 1\nper_client_window_secs = 0\n");
    let err = load(&no_window, &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        "config key limits.per_client_window_secs: must be at least 1 when limits.per_client_max \
         is set"
    );
    let off = format!("{MINIMAL}\n[limits]\nper_client_max = 0\nper_client_window_secs = 0\n");
    load(&off, &[]).unwrap();
    let huge = format!("{MINIMAL}\n[limits]\nper_client_max = 10001\n");
    let err = load(&huge, &[]).unwrap_err().to_string();
    assert!(err.contains("limits.per_client_max"), "{err}");
    let typo = format!("{MINIMAL}\n[limits]\nper_client_maximum = 1\n");
    let err = load(&typo, &[]).unwrap_err().to_string();
    assert!(err.contains("per_client_maximum"), "{err}");
}
