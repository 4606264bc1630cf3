//! The trigger mode: a trigger on `subscribers_restaurants` writes each change of a pair to
//! `campaign_notifier_pair_changes` in the app's own transaction.
//!
//! It is the way to follow deletes and moves on a server without `wal_level = logical`, at the
//! price of a trigger on the app's table (a row written per changed pair, in the app's
//! transaction). It is installed only when the configuration asks for this mode, and only by a
//! user allowed to (the table's owner); [`install`] says so when it cannot. The function runs as
//! its owner (`SECURITY DEFINER`, with a fixed `search_path`), so the app's own user needs no
//! right on the service's table for its writes to go through. `committed_at` is the moment the
//! row changed (`clock_timestamp()`), shortly before the commit.

use tokio_postgres::Client;

/// The trigger's name on `subscribers_restaurants`.
pub const TRIGGER: &str = "campaign_notifier_pair_changes";

/// The function and the trigger; safe to run again.
pub const INSTALL: &str = "
CREATE OR REPLACE FUNCTION public.campaign_notifier_pair_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO public.campaign_notifier_pair_changes (op, restaurant_id, client_id, committed_at)
        VALUES ('reload', '', 'subscribers_restaurants was truncated', clock_timestamp());
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.restaurant_id IS NOT DISTINCT FROM NEW.restaurant_id
       AND OLD.client_id IS NOT DISTINCT FROM NEW.client_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO public.campaign_notifier_pair_changes (op, restaurant_id, client_id, committed_at)
        VALUES ('remove', OLD.restaurant_id, OLD.client_id, clock_timestamp());
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO public.campaign_notifier_pair_changes (op, restaurant_id, client_id, committed_at)
        VALUES ('add', NEW.restaurant_id, NEW.client_id, clock_timestamp());
    END IF;
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS campaign_notifier_pair_changes ON public.subscribers_restaurants;
CREATE TRIGGER campaign_notifier_pair_changes
    AFTER INSERT OR UPDATE OR DELETE ON public.subscribers_restaurants
    FOR EACH ROW EXECUTE FUNCTION public.campaign_notifier_pair_change();
DROP TRIGGER IF EXISTS campaign_notifier_pair_truncate ON public.subscribers_restaurants;
CREATE TRIGGER campaign_notifier_pair_truncate
    AFTER TRUNCATE ON public.subscribers_restaurants
    FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_notifier_pair_change();
";

/// What removes it again (docs/operations.md).
pub const UNINSTALL: &str = "
DROP TRIGGER IF EXISTS campaign_notifier_pair_changes ON public.subscribers_restaurants;
DROP TRIGGER IF EXISTS campaign_notifier_pair_truncate ON public.subscribers_restaurants;
DROP FUNCTION IF EXISTS public.campaign_notifier_pair_change();
";

/// Whether the trigger is on the table and enabled.
pub async fn installed(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger
                 WHERE tgrelid = 'public.subscribers_restaurants'::regclass
                   AND tgname = $1 AND tgenabled <> 'D')",
            &[&TRIGGER],
        )
        .await?;
    row.try_get(0)
}

/// Installs the trigger unless it is there, in one transaction with a lock that makes two
/// instances take turns; true when it installed it.
pub async fn install(client: &mut Client) -> Result<bool, tokio_postgres::Error> {
    if installed(client).await? {
        return Ok(false);
    }
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('campaign_notifier_pair_changes'))",
        &[],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger
                 WHERE tgrelid = 'public.subscribers_restaurants'::regclass AND tgname = $1)",
            &[&TRIGGER],
        )
        .await?;
    if row.try_get(0)? {
        return Ok(false);
    }
    tx.batch_execute(INSTALL).await?;
    tx.commit().await?;
    Ok(true)
}
