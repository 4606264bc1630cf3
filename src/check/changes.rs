//! The `subscriber changes` line of `check-config --connect`: which mode `cache.changes` comes to
//! on this server, as `changes::mode::resolve` decides it at start-up but without creating
//! anything, and, where the logical mode is not allowed, each thing missing with its fix.

use campaign_actors::changes::mode::list;
use campaign_actors::changes::server::{self, Capabilities};
use campaign_actors::changes::{trigger, ChangesSetting, SlotNames, SCHEMA, TABLE};
use campaign_actors::postgres::describe;
use tokio_postgres::Client;

use super::{status_line, Status};

const WHAT: &str = "subscriber changes";

/// Where to read how each mode is set up.
const DOCS: &str = "docs/operations.md, \"Following subscription changes\"";

/// The trigger of `changes::trigger` on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TriggerState {
    Installed,
    /// Not there; the service installs it at start (its user owns the table, or the table is
    /// created at start by that user).
    Installable,
    /// Not there, and the service's user may not install it.
    Refused,
}

/// What the server said, as far as `setting` needs it.
#[derive(Debug, Clone, PartialEq)]
struct Facts {
    user: String,
    /// Asked for `auto` and `logical`.
    caps: Option<Capabilities>,
    /// A publication of the configured name exists (with the table or without it).
    publication_named: bool,
    /// Asked for `trigger`, and for `auto` where the logical mode is not allowed.
    trigger: Option<TriggerState>,
}

/// Prints the line; false only for a failure.
pub(super) async fn check(
    client: &Client,
    user: &str,
    setting: ChangesSetting,
    names: &SlotNames,
) -> bool {
    let (status, said) = match facts(client, user, setting, names).await {
        Ok(facts) => changes_line(setting, names, &facts),
        Err(e) => (
            Status::Failed,
            format!(
                "cannot ask the server which mode it allows: {}",
                describe(&e)
            ),
        ),
    };
    status_line(status, WHAT, said)
}

async fn facts(
    client: &Client,
    user: &str,
    setting: ChangesSetting,
    names: &SlotNames,
) -> Result<Facts, tokio_postgres::Error> {
    let mut facts = Facts {
        user: user.to_string(),
        caps: None,
        publication_named: false,
        trigger: None,
    };
    if matches!(setting, ChangesSetting::Auto | ChangesSetting::Logical) {
        let caps = server::probe(client, &names.publication, &names.slot).await?;
        let logical = caps.missing().is_empty();
        facts.caps = Some(caps);
        facts.publication_named = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&names.publication],
            )
            .await?
            .try_get(0)?;
        if logical || setting == ChangesSetting::Logical {
            return Ok(facts);
        }
    }
    if setting != ChangesSetting::Ids {
        facts.trigger = Some(trigger_state(client).await?);
    }
    Ok(facts)
}

/// Whether the trigger is installed, and if not whether this user may install it: the table's
/// owner (or a superuser) with CREATE on schema public, for the function.
async fn trigger_state(client: &Client) -> Result<TriggerState, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, \
               COALESCE((SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class \
                 WHERE oid = to_regclass($1)), true) \
               AND has_schema_privilege($2, 'CREATE')",
            &[&format!("{SCHEMA}.{TABLE}"), &SCHEMA],
        )
        .await?;
    let (exists, may_install): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    if exists && trigger::installed(client).await? {
        return Ok(TriggerState::Installed);
    }
    Ok(match may_install {
        true => TriggerState::Installable,
        false => TriggerState::Refused,
    })
}

/// The line for what `setting` comes to, given what the server said.
fn changes_line(setting: ChangesSetting, names: &SlotNames, facts: &Facts) -> (Status, String) {
    let missing = facts.caps.as_ref().map(Capabilities::missing);
    let logical_allowed = missing.as_ref().is_some_and(Vec::is_empty);
    let not_logical = missing.as_deref().map(list).unwrap_or_default();
    match setting {
        ChangesSetting::Ids => (
            Status::Ok,
            "ids, as configured: new rows by id; deletes and moves wait for the next reload \
             (cache.refresh_interval_secs)"
                .to_string(),
        ),
        ChangesSetting::Trigger => trigger_line(facts),
        _ if logical_allowed => logical_line(names, facts),
        ChangesSetting::Logical => (
            Status::Failed,
            format!("cache.changes = \"logical\", but the server does not allow it: {not_logical}"),
        ),
        ChangesSetting::Auto => match facts.trigger {
            Some(TriggerState::Installed) => (
                Status::Ok,
                format!(
                    "trigger on {SCHEMA}.{TABLE} (installed); not logical decoding: {not_logical}"
                ),
            ),
            _ => (
                Status::Warn,
                format!(
                    "ids only — deletes and moves wait for the reload; for logical decoding: \
                     {not_logical}; or install the trigger ({DOCS})"
                ),
            ),
        },
    }
}

/// The logical mode, allowed: what the service makes at start, or a publication of the name
/// that exists without the table (through which no change of it would ever come).
fn logical_line(names: &SlotNames, facts: &Facts) -> (Status, String) {
    let Some(caps) = &facts.caps else {
        return (Status::Failed, "the server was not asked".to_string());
    };
    let publication = &names.publication;
    if facts.publication_named && !caps.publication {
        return (
            Status::Failed,
            format!(
                "publication {publication} exists without {SCHEMA}.{TABLE}, so no change of \
                 it would arrive (fix: ALTER PUBLICATION \"{publication}\" ADD TABLE \
                 {SCHEMA}.{TABLE})"
            ),
        );
    }
    let made = |exists: bool| match exists {
        true => "exists",
        false => "will be made at start",
    };
    (
        Status::Ok,
        format!(
            "logical decoding (slot {} {}, publication {publication} {})",
            names.slot,
            made(caps.slot_exists),
            made(caps.publication)
        ),
    )
}

/// `trigger` as configured: installed, installed at start, or refused.
fn trigger_line(facts: &Facts) -> (Status, String) {
    match facts.trigger {
        Some(TriggerState::Installed) => (
            Status::Ok,
            format!("trigger on {SCHEMA}.{TABLE} (installed)"),
        ),
        Some(TriggerState::Installable) => (
            Status::Ok,
            format!(
                "trigger on {SCHEMA}.{TABLE} (not installed yet: {} installs it at start)",
                facts.user
            ),
        ),
        _ => (
            Status::Failed,
            format!(
                "cache.changes = \"trigger\", but the trigger is not installed and {} may not \
                 install it (not the owner of {SCHEMA}.{TABLE}); its owner can, with the \
                 statements of {DOCS}",
                facts.user
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> SlotNames {
        SlotNames {
            slot: "campaign_notifier_subscribers".to_string(),
            publication: "campaign_notifier_subscribers".to_string(),
        }
    }

    fn ready() -> Capabilities {
        Capabilities {
            user: "notifier".to_string(),
            publication_name: "campaign_notifier_subscribers".to_string(),
            wal_level: "logical".to_string(),
            replication: true,
            superuser: false,
            publication: true,
            can_create_publication: false,
            replica_identity_full: true,
            free_slots: 3,
            slot_exists: false,
        }
    }

    fn facts(caps: Option<Capabilities>, trigger: Option<TriggerState>) -> Facts {
        Facts {
            user: "notifier".to_string(),
            publication_named: caps.as_ref().is_some_and(|c| c.publication),
            caps,
            trigger,
        }
    }

    fn replica() -> Capabilities {
        Capabilities {
            wal_level: "replica".to_string(),
            ..ready()
        }
    }

    #[test]
    fn logical_allowed_says_what_is_made_at_start() {
        for setting in [ChangesSetting::Auto, ChangesSetting::Logical] {
            let (status, said) = changes_line(setting, &names(), &facts(Some(ready()), None));
            assert_eq!(status, Status::Ok, "{said}");
            assert_eq!(
                said,
                "logical decoding (slot campaign_notifier_subscribers will be made at start, \
                 publication campaign_notifier_subscribers exists)"
            );
        }
    }

    #[test]
    fn logical_refused_fails_and_auto_falls_back_with_a_warning_or_to_the_trigger() {
        let refused = changes_line(
            ChangesSetting::Logical,
            &names(),
            &facts(Some(replica()), None),
        );
        assert_eq!(refused.0, Status::Failed, "{}", refused.1);
        assert!(refused.1.contains("ALTER SYSTEM SET wal_level = logical"));
        let ids = facts(Some(replica()), Some(TriggerState::Installable));
        let (status, said) = changes_line(ChangesSetting::Auto, &names(), &ids);
        assert_eq!(status, Status::Warn, "{said}");
        assert!(said.starts_with("ids only"), "{said}");
        assert!(said.contains("wal_level is replica"), "{said}");
        let installed = facts(Some(replica()), Some(TriggerState::Installed));
        let (status, said) = changes_line(ChangesSetting::Auto, &names(), &installed);
        assert_eq!(status, Status::Ok, "{said}");
        assert!(said.starts_with("trigger on public.subscribers_restaurants"));
    }

    #[test]
    fn a_publication_without_the_table_fails() {
        let mut without = facts(Some(ready()), None);
        without.caps = Some(Capabilities {
            publication: false,
            can_create_publication: true,
            ..ready()
        });
        without.publication_named = true;
        let (status, said) = changes_line(ChangesSetting::Auto, &names(), &without);
        assert_eq!(status, Status::Failed, "{said}");
        assert!(said.contains("ADD TABLE public.subscribers_restaurants"));
    }

    #[test]
    fn a_trigger_that_cannot_be_installed_fails() {
        let line = |state| changes_line(ChangesSetting::Trigger, &names(), &facts(None, state));
        assert_eq!(line(Some(TriggerState::Installed)).0, Status::Ok);
        assert_eq!(line(Some(TriggerState::Installable)).0, Status::Ok);
        let (status, said) = line(Some(TriggerState::Refused));
        assert_eq!(status, Status::Failed, "{said}");
        assert!(said.contains("not the owner"), "{said}");
    }
}
