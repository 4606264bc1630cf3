//! What the server allows for logical decoding of the table, found out with plain queries, and
//! for each thing missing the statement (or setting) an operator runs to fix it.
//!
//! Must not touch: the slot's position or its changes ([`super::slot`]); the only thing created
//! here is the publication, and only where the role may create it.

use tokio_postgres::Client;

use super::{REPLICA_IDENTITY_FIX, SCHEMA, TABLE};

#[derive(Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// The role the service connects as, named in the fixes.
    pub user: String,
    /// The publication asked about, named in the fixes.
    pub publication_name: String,
    pub wal_level: String,
    /// rolreplication or superuser
    pub replication: bool,
    pub superuser: bool,
    /// publication exists and includes the table
    pub publication: bool,
    /// can create it (table owner or superuser)
    pub can_create_publication: bool,
    pub replica_identity_full: bool,
    /// max_replication_slots minus slots in use
    pub free_slots: i64,
    /// the slot exists already
    pub slot_exists: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub what: String,
    pub fix: String,
}

impl Capabilities {
    /// Empty when logical decoding can be used; else each missing thing with the statement (or
    /// setting) that fixes it.
    pub fn missing(&self) -> Vec<Missing> {
        let mut missing = Vec::new();
        let mut add = |what: String, fix: String| missing.push(Missing { what, fix });
        if self.wal_level != "logical" {
            add(
                format!("wal_level is {}, not logical", self.wal_level),
                "ALTER SYSTEM SET wal_level = logical; then restart the server".to_string(),
            );
        }
        if !self.replication {
            add(
                format!("role {} has no REPLICATION attribute", self.user),
                format!("ALTER ROLE {} REPLICATION", quote_ident(&self.user)),
            );
        }
        if !self.publication && !self.can_create_publication {
            let name = quote_ident(&self.publication_name);
            add(
                format!(
                    "publication {} of {SCHEMA}.{TABLE}, which role {} may not create",
                    self.publication_name, self.user
                ),
                format!(
                    "{}; or, if the publication exists without the table, \
                     ALTER PUBLICATION {name} ADD TABLE {SCHEMA}.{TABLE}",
                    create_publication(&self.publication_name)
                ),
            );
        }
        if !self.replica_identity_full {
            add(
                format!("{SCHEMA}.{TABLE} is not REPLICA IDENTITY FULL"),
                REPLICA_IDENTITY_FIX.to_string(),
            );
        }
        if !self.slot_exists && self.free_slots < 1 {
            add(
                "a free replication slot (all of max_replication_slots are in use)".to_string(),
                "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = ...; then \
                 restart the server), or drop an unused slot"
                    .to_string(),
            );
        }
        missing
    }
}

/// What the server and the role allow, for the publication `publication` and the slot `slot`.
pub async fn probe(
    client: &Client,
    publication: &str,
    slot: &str,
) -> Result<Capabilities, tokio_postgres::Error> {
    let table = format!("{SCHEMA}.{TABLE}");
    let row = client
        .query_one(
            "WITH me AS (SELECT rolname, rolreplication, rolsuper FROM pg_roles \
                 WHERE rolname = current_user), \
             t AS (SELECT relowner, relreplident FROM pg_class WHERE oid = to_regclass($3)) \
             SELECT me.rolname::text, current_setting('wal_level'), \
               me.rolreplication OR me.rolsuper, me.rolsuper, \
               EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 \
                 AND schemaname = $4 AND tablename = $5), \
               me.rolsuper OR (has_database_privilege(current_database(), 'CREATE') \
                 AND COALESCE((SELECT pg_has_role(current_user, relowner, 'USAGE') FROM t), \
                   false)), \
               COALESCE((SELECT relreplident = 'f' FROM t), false), \
               current_setting('max_replication_slots')::int8 \
                 - (SELECT count(*) FROM pg_replication_slots), \
               EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $2) \
             FROM me",
            &[&publication, &slot, &table, &SCHEMA, &TABLE],
        )
        .await?;
    Ok(Capabilities {
        user: row.try_get(0)?,
        publication_name: publication.to_string(),
        wal_level: row.try_get(1)?,
        replication: row.try_get(2)?,
        superuser: row.try_get(3)?,
        publication: row.try_get(4)?,
        can_create_publication: row.try_get(5)?,
        replica_identity_full: row.try_get(6)?,
        free_slots: row.try_get(7)?,
        slot_exists: row.try_get(8)?,
    })
}

/// Creates the publication for the table unless it exists, or adds the table to one of that name
/// that lacks it; true when it created or changed it. Where the role may not, the server's
/// refusal comes back as the error.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
) -> Result<bool, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if exists {
        // One of that name without the table would let the mode start and never see a change.
        let has_table = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &SCHEMA, &TABLE],
            )
            .await?
            .is_some();
        if !has_table {
            let add = format!(
                "ALTER PUBLICATION {} ADD TABLE {SCHEMA}.{TABLE}",
                quote_ident(publication)
            );
            client.batch_execute(&add).await?;
            return Ok(true);
        }
        return Ok(false);
    }
    match client.batch_execute(&create_publication(publication)).await {
        Ok(()) => Ok(true),
        // Another instance created it between the look and the statement.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn create_publication(publication: &str) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {SCHEMA}.{TABLE}",
        quote_ident(publication)
    )
}

/// An identifier as SQL text, always quoted (a role or publication name may hold anything).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            free_slots: 0,
            slot_exists: true,
        }
    }

    fn fixes(caps: &Capabilities) -> Vec<String> {
        caps.missing().into_iter().map(|m| m.fix).collect()
    }

    #[test]
    fn a_server_with_everything_misses_nothing() {
        assert_eq!(ready().missing(), Vec::new());
    }

    #[test]
    fn a_publication_that_can_be_created_is_not_missing() {
        let caps = Capabilities {
            publication: false,
            can_create_publication: true,
            ..ready()
        };
        assert_eq!(caps.missing(), Vec::new());
    }

    #[test]
    fn a_wal_level_other_than_logical_names_the_setting_and_the_restart() {
        let caps = Capabilities {
            wal_level: "replica".to_string(),
            ..ready()
        };
        let missing = caps.missing();
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].what.contains("wal_level is replica"),
            "{missing:?}"
        );
        assert!(missing[0]
            .fix
            .contains("ALTER SYSTEM SET wal_level = logical"));
        assert!(missing[0].fix.contains("restart"));
    }

    #[test]
    fn a_role_without_replication_is_told_the_alter_role_statement() {
        let caps = Capabilities {
            replication: false,
            ..ready()
        };
        assert_eq!(fixes(&caps), vec![r#"ALTER ROLE "notifier" REPLICATION"#]);
    }

    #[test]
    fn a_publication_that_cannot_be_created_is_told_the_create_statement() {
        let caps = Capabilities {
            publication: false,
            ..ready()
        };
        let fixes = fixes(&caps);
        assert_eq!(fixes.len(), 1, "{fixes:?}");
        let create = "CREATE PUBLICATION \"campaign_notifier_subscribers\" FOR TABLE \
                      public.subscribers_restaurants";
        assert!(fixes[0].starts_with(create), "{fixes:?}");
    }

    #[test]
    fn a_table_without_replica_identity_full_is_told_the_alter_table_statement() {
        let caps = Capabilities {
            replica_identity_full: false,
            ..ready()
        };
        assert_eq!(fixes(&caps), vec![REPLICA_IDENTITY_FIX]);
    }

    #[test]
    fn no_free_slot_is_missing_only_while_the_slot_does_not_exist() {
        let caps = Capabilities {
            slot_exists: false,
            ..ready()
        };
        let fixes = fixes(&caps);
        assert_eq!(fixes.len(), 1, "{fixes:?}");
        assert!(fixes[0].contains("max_replication_slots"), "{fixes:?}");
        let with_room = Capabilities {
            slot_exists: false,
            free_slots: 1,
            ..ready()
        };
        assert_eq!(with_room.missing(), Vec::new());
    }

    #[test]
    fn everything_missing_is_listed_once_each() {
        let caps = Capabilities {
            wal_level: "minimal".to_string(),
            replication: false,
            publication: false,
            replica_identity_full: false,
            slot_exists: false,
            ..ready()
        };
        assert_eq!(caps.missing().len(), 5);
    }
}
