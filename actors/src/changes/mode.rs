//! Which [`Mode`] the server allows, asked once at start-up.

use tokio_postgres::Client;

use super::server::{self, Missing};
use super::{trigger, ChangesSetting, Mode, SlotNames};
use crate::postgres::describe;

/// The mode chosen, and why, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub mode: Mode,
    pub why: String,
}

/// Why the configured mode cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("cannot ask the server which mode it allows: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cache.changes = \"logical\", but the server does not allow it: {}", list(.0))]
    LogicalNotAllowed(Vec<Missing>),
    #[error(
        "cache.changes = \"trigger\", but the trigger cannot be installed on \
         public.subscribers_restaurants ({}); its owner can install it with the statements of \
         docs/operations.md, \"Following subscription changes\"",
        describe(.0)
    )]
    TriggerRefused(tokio_postgres::Error),
}

/// The missing things and their fixes, in one line.
pub fn list(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{} (fix: {})", m.what, m.fix))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The mode `setting` comes to on this server.
pub async fn resolve(
    client: &mut Client,
    setting: ChangesSetting,
    names: &SlotNames,
) -> Result<Resolved, ModeError> {
    let resolved = resolve_mode(client, setting, names).await?;
    if !matches!(resolved.mode, Mode::Logical(_)) {
        warn_of_a_slot_left(client, names).await?;
    }
    Ok(resolved)
}

/// A slot of an earlier logical mode that nobody reads any more keeps the server's WAL for ever.
async fn warn_of_a_slot_left(client: &Client, names: &SlotNames) -> Result<(), ModeError> {
    if let Some(state) = super::slot::state(client, &names.slot).await? {
        log::warn!(
            "the replication slot {} exists but subscriber changes are not read from it in this \
             mode: the server keeps WAL for it ({} bytes now) until it is dropped; with every \
             instance in this mode, drop it with SELECT pg_drop_replication_slot('{}')",
            names.slot,
            state.retained_bytes,
            names.slot
        );
    }
    Ok(())
}

async fn resolve_mode(
    client: &mut Client,
    setting: ChangesSetting,
    names: &SlotNames,
) -> Result<Resolved, ModeError> {
    if matches!(setting, ChangesSetting::Auto | ChangesSetting::Logical) {
        let missing = server::probe(client, &names.publication, &names.slot)
            .await?
            .missing();
        if missing.is_empty() {
            server::ensure_publication(client, &names.publication).await?;
            return Ok(Resolved {
                mode: Mode::Logical(names.clone()),
                why: format!(
                    "logical decoding, slot {} of publication {}",
                    names.slot, names.publication
                ),
            });
        }
        if setting == ChangesSetting::Logical {
            return Err(ModeError::LogicalNotAllowed(missing));
        }
        return auto_without_logical(client, &missing).await;
    }
    match setting {
        ChangesSetting::Trigger => {
            let installed = trigger::install(client)
                .await
                .map_err(ModeError::TriggerRefused)?;
            let how = if installed {
                "installed now"
            } else {
                "installed"
            };
            Ok(Resolved {
                mode: Mode::Trigger,
                why: format!("the trigger on subscribers_restaurants ({how})"),
            })
        }
        _ => Ok(Resolved {
            mode: Mode::Ids,
            why: "new rows by id, deletes and moves at each reload (as configured)".into(),
        }),
    }
}

/// `auto` on a server without logical decoding: the trigger if its owner installed it.
async fn auto_without_logical(client: &Client, missing: &[Missing]) -> Result<Resolved, ModeError> {
    if trigger::installed(client).await? {
        return Ok(Resolved {
            mode: Mode::Trigger,
            why: format!(
                "the trigger on subscribers_restaurants; not logical: {}",
                list(missing)
            ),
        });
    }
    Ok(Resolved {
        mode: Mode::Ids,
        why: format!(
            "new rows by id, deletes and moves at each reload; not logical: {}; no trigger \
             installed",
            list(missing)
        ),
    })
}
