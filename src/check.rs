//! `check-config --connect`: whether what the config names can be reached and used, one line
//! each, so an operator learns which of the brokers, the topics, the credentials, Postgres and
//! its tables is wrong before starting the service, and which way the subscribers' changes are
//! followed on this server ([`changes`]).

mod changes;

use std::time::Duration;

use campaign_actors::clock::Clock;
use campaign_actors::config::Settings;
use campaign_actors::kafka::access::{self, Access, TopicState};
use campaign_actors::postgres::trigger_column::{
    TriggerColumnError, INT4_LAST_DATE, MIGRATION, MIGRATION_NOTE,
};
use campaign_actors::postgres::{self, describe, TriggerColumn};

const WAIT: Duration = Duration::from_secs(10);

/// The tables the service reads or writes, with the privileges it needs on each.
const TABLES: [(&str, &[&str]); 8] = [
    ("subscribers_restaurants", &["SELECT"]),
    ("subscribers_feedback", &["SELECT", "INSERT", "DELETE"]),
    (
        "campaign_notifier_outbox",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "campaign_notifier_campaigns",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "campaign_notifier_feed",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "campaign_notifier_owners",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "campaign_notifier_leaders",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    (
        "campaign_notifier_pair_changes",
        &["SELECT", "INSERT", "DELETE"],
    ),
];

/// The sequences the service takes ids from.
const SEQUENCES: [(&str, &[&str]); 1] = [("campaign_notifier_owner_seq", &["USAGE"])];

/// Prints one line per check; true when every one passed.
pub fn reachable(settings: Settings, create_schema: bool) -> bool {
    let system = actix_rt::System::new();
    let ok = system.block_on(async move {
        let kafka = check_kafka(&settings).await;
        let postgres = check_postgres(&settings, create_schema).await;
        kafka && postgres
    });
    ok
}

fn line(ok: bool, what: &str, said: impl std::fmt::Display) -> bool {
    status_line(if ok { Status::Ok } else { Status::Failed }, what, said)
}

/// How a line ends the check: `warn` is something to act on that works today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Failed,
}

/// Prints the line; false only for a failure.
fn status_line(status: Status, what: &str, said: impl std::fmt::Display) -> bool {
    let mark = match status {
        Status::Ok => "ok    ",
        Status::Warn => "warn  ",
        Status::Failed => "FAILED",
    };
    println!("{mark} {what}: {said}");
    status != Status::Failed
}

/// The line about `subscribers_feedback.trigger_datetime_created` for what was read of it, at
/// `now_secs`: int8 is fine; int4 works until 2038-01-19T03:14:07Z (a warning with the
/// migration) and fails the check from then on, as it stops the service's start.
fn trigger_column_line(
    read: Result<TriggerColumn, TriggerColumnError>,
    now_secs: i64,
    create_schema: bool,
) -> (Status, String) {
    let until = format!(
        "works until {INT4_LAST_DATE}, then the service stops (exit code 3) rather than \
         store a notification; migrate it before then: {MIGRATION} ({MIGRATION_NOTE})"
    );
    match read.and_then(|column| column.usable_at(now_secs)) {
        Ok(TriggerColumn::Int8) => (Status::Ok, "int8".into()),
        Ok(TriggerColumn::Int4) => (Status::Warn, format!("int4: {until}")),
        Err(TriggerColumnError::Missing) if create_schema => (
            Status::Warn,
            format!("missing: created at start as int4 (the brief's DDL), which {until}"),
        ),
        Err(e) => (Status::Failed, e.to_string()),
    }
}

async fn check_kafka(settings: &Settings) -> bool {
    let producer = settings.producer.clone();
    let brokers = producer.brokers.clone();
    let checked = tokio::task::spawn_blocking(move || access::check(&producer, WAIT)).await;
    match checked {
        Ok(Ok(Access::Granted)) => line(true, "kafka", format!("{brokers} answered")),
        Ok(Ok(Access::Unreachable(reason))) => {
            return line(
                false,
                "kafka",
                format!("no broker of {brokers} answered: {reason}"),
            )
        }
        Ok(Err(e)) => return line(false, "kafka", e.message),
        Err(e) => return line(false, "kafka", format!("the check failed: {e}")),
    };
    let mut names = vec![settings.reader.topic.clone(), settings.output_topic.clone()];
    names.extend(settings.dead_letter_topic.clone());
    let producer = settings.producer.clone();
    let topics = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        access::topics(&producer, &names, WAIT)
    })
    .await;
    let topics = match topics {
        Ok(Ok(topics)) => topics,
        Ok(Err(e)) => return line(false, "kafka topics", e.message),
        Err(e) => return line(false, "kafka topics", format!("the check failed: {e}")),
    };
    let mut ok = true;
    for (name, state) in topics {
        ok &= match state {
            TopicState::Partitions(n) => {
                line(true, &format!("topic {name}"), format!("{n} partitions"))
            }
            TopicState::Refused(reason) => line(
                false,
                &format!("topic {name}"),
                format!("{reason} (the service creates no topics)"),
            ),
        };
    }
    ok
}

async fn check_postgres(settings: &Settings, create_schema: bool) -> bool {
    let client = match postgres::connect(&settings.postgres, "check").await {
        Ok(client) => client,
        Err(e) => return line(false, "postgres", format!("cannot connect: {e}")),
    };
    let about = client
        .query_one(
            "SELECT current_user::text, version(), coalesce((SELECT ssl FROM pg_stat_ssl \
             WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await;
    let (user, version, tls) = match about {
        Ok(row) => (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2),
        ),
        Err(e) => {
            return line(
                false,
                "postgres",
                format!("connected, then: {}", describe(&e)),
            )
        }
    };
    let version = version.split(" on ").next().unwrap_or(&version).to_string();
    let tls = if tls { "TLS" } else { "no TLS" };
    let mut ok = line(
        true,
        "postgres",
        format!("connected as {user} ({version}, {tls})"),
    );
    let relations = TABLES
        .iter()
        .map(|(name, privileges)| ("table", *name, *privileges))
        .chain(
            SEQUENCES
                .iter()
                .map(|(name, privileges)| ("sequence", *name, *privileges)),
        );
    for (kind, name, privileges) in relations {
        ok &= check_relation(&client, &user, kind, name, privileges, create_schema).await;
    }
    let column = TriggerColumn::read(&client).await;
    let (status, said) = trigger_column_line(column, Clock::system().now_secs(), create_schema);
    ok &= status_line(
        status,
        "column subscribers_feedback.trigger_datetime_created",
        said,
    );
    let names = settings.cache.slot_names();
    ok &= changes::check(&client, &user, settings.cache.changes, &names).await;
    ok
}

/// One line for a table or sequence: it exists (or is created at start) and `user` holds
/// `privileges` on it.
async fn check_relation(
    client: &tokio_postgres::Client,
    user: &str,
    kind: &str,
    name: &str,
    privileges: &[&str],
    create_schema: bool,
) -> bool {
    let what = format!("{kind} {name}");
    let relation = format!("public.{name}");
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await
        .map(|row| row.get::<_, bool>(0));
    match exists {
        Ok(true) => {}
        Ok(false) if create_schema => {
            return line(
                true,
                &what,
                "missing: created at start (needs CREATE on schema public)",
            );
        }
        Ok(false) => return line(false, &what, "missing, and postgres.create_schema is off"),
        Err(e) => return line(false, &what, describe(&e)),
    }
    let function = match kind {
        "sequence" => "has_sequence_privilege",
        _ => "has_table_privilege",
    };
    let mut lacking = Vec::new();
    for privilege in privileges {
        let held = client
            .query_one(
                &format!("SELECT {function}($1, $2)"),
                &[&relation, privilege],
            )
            .await
            .map(|row| row.get::<_, bool>(0));
        if !matches!(held, Ok(true)) {
            lacking.push(*privilege);
        }
    }
    match lacking.is_empty() {
        true => line(true, &what, privileges.join(", ")),
        false => line(false, &what, format!("{user} lacks {}", lacking.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use campaign_actors::postgres::trigger_column::INT4_LAST_SECOND;

    #[test]
    fn an_int4_column_is_a_warning_until_2038_and_a_failure_after() {
        let today = 1_764_700_000;
        let (status, said) = trigger_column_line(Ok(TriggerColumn::Int8), today, true);
        assert_eq!((status, said.as_str()), (Status::Ok, "int8"));
        for now in [today, INT4_LAST_SECOND] {
            let (status, said) = trigger_column_line(Ok(TriggerColumn::Int4), now, true);
            assert_eq!(status, Status::Warn, "{now}: {said}");
            assert!(said.contains("works until 2038-01-19T03:14:07Z"), "{said}");
            assert!(said.contains(MIGRATION), "{said}");
        }
        let (status, said) =
            trigger_column_line(Ok(TriggerColumn::Int4), INT4_LAST_SECOND + 1, true);
        assert_eq!(status, Status::Failed, "{said}");
        assert!(said.contains(MIGRATION), "{said}");
        let (status, _) = trigger_column_line(Err(TriggerColumnError::Missing), today, true);
        assert_eq!(status, Status::Warn, "created at start, as int4");
        let (status, _) = trigger_column_line(Err(TriggerColumnError::Missing), today, false);
        assert_eq!(status, Status::Failed);
        let unsupported = Err(TriggerColumnError::Unsupported("numeric".into()));
        assert_eq!(
            trigger_column_line(unsupported, today, true).0,
            Status::Failed
        );
    }
}
