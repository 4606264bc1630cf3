//! The durable table of campaigns, `campaign_notifier_campaigns`: one row per (restaurant,
//! campaign), the newest version the service has seen, its original message and its [`State`].
//!
//! Every statement the lifecycle runs is here (the two longest, the store of versions and the
//! claim, in `store_versions.sql` and `store_claim_due.sql` beside this file). Due campaigns are
//! claimed with `FOR UPDATE SKIP LOCKED`, so with several instances exactly one fires each; a
//! campaign whose firing instance died (its owner lock is free) is claimed again by another.
//!
//! The change feed of `subscribers_restaurants` reads the rows whose `id` (the table's serial
//! key) is above the mark kept in `campaign_notifier_feed`: it works on any Postgres, with no
//! `wal_level` change, trigger or other DDL on the app's table. One instance at a time follows it
//! (the owner named in `campaign_notifier_leaders`, while its lease is live). How it waits for ids
//! that commit out of order, and notices a truncated table, is [`crate::changes::cursor`].

use std::sync::Arc;

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::{Client, Row, Statement};

use super::rules::{Kept, State, Version, Window};
use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::campaign::Campaign;
use crate::lease::LOCK_CLASS;
use crate::notification::SourceRef;

/// A campaign as it arrived: the validated fields and the message they came from (kept to
/// dead-letter it, should a sink refuse it when it fires).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub campaign: Campaign,
    pub source: SourceRef,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Arrival {
    pub fn version(&self) -> Version {
        Version::of(&self.campaign, &self.source)
    }
}

/// A campaign's key in the table.
pub type Key = (String, String);

/// A map by campaign key, with a fast hasher: the keys are the service's own (campaign ids read
/// from the input), looked up for every arrival.
pub type KeyMap<V> = std::collections::HashMap<Key, V, foldhash::fast::RandomState>;

pub fn key_of(c: &Campaign) -> Key {
    (c.restaurant_id.clone(), c.adv_campaign_id.clone())
}

const COLUMNS: &str = "restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
    adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, \
    datetime_created, source_topic, source_partition, source_offset, source_timestamp_ms, \
    message_key, message, state";

fn campaign_of(row: &Row) -> Result<Campaign, tokio_postgres::Error> {
    Ok(Campaign {
        restaurant_id: row.try_get("restaurant_id")?,
        adv_campaign_id: row.try_get("adv_campaign_id")?,
        adv_campaign_content: row.try_get("adv_campaign_content")?,
        adv_campaign_owner: row.try_get("adv_campaign_owner")?,
        adv_campaign_owner_contact: row.try_get("adv_campaign_owner_contact")?,
        adv_campaign_datetime_start: row.try_get("adv_campaign_datetime_start")?,
        adv_campaign_datetime_end: row.try_get("adv_campaign_datetime_end")?,
        datetime_created: row.try_get("datetime_created")?,
    })
}

fn state_of(row: &Row) -> Result<State, tokio_postgres::Error> {
    let text: &str = row.try_get("state")?;
    // The table's CHECK constraint admits only the states the service knows.
    Ok(State::parse(text).unwrap_or(State::Refused))
}

fn arrival_of(row: &Row) -> Result<Arrival, tokio_postgres::Error> {
    let topic: String = row.try_get("source_topic")?;
    Ok(Arrival {
        campaign: campaign_of(row)?,
        source: SourceRef {
            topic: Arc::from(topic),
            partition: row.try_get("source_partition")?,
            offset: row.try_get("source_offset")?,
            timestamp_ms: row.try_get("source_timestamp_ms")?,
        },
        key: row.try_get("message_key")?,
        payload: row.try_get("message")?,
    })
}

/// The kept versions of the keys `$1` (restaurants) and `$2` (campaigns): one primary-key lookup
/// per key. The statement is prepared once and soon runs a generic plan; written as a join, a plan
/// made while the table was small hashes the keys and scans the whole table for every group, and
/// keeps doing so as the table grows. The `LIMIT` keeps the lookup a lookup.
pub fn kept_statement() -> String {
    format!(
        "SELECT kept.* FROM unnest($1::text[], $2::text[]) AS k(restaurant_id, adv_campaign_id)
         CROSS JOIN LATERAL (
             SELECT {COLUMNS}, recalled_at FROM public.campaign_notifier_campaigns c
             WHERE c.restaurant_id = k.restaurant_id AND c.adv_campaign_id = k.adv_campaign_id
             LIMIT 1
         ) kept"
    )
}

/// Stores versions: one row per (restaurant, campaign), replaced only by what [`decide`] may
/// have put in its place, so that a decision made on a version another instance has replaced
/// since (or on a row it has claimed since) changes nothing: an existing row is replaced by a
/// newer version only (the columns of [`Version`], in its order; a row of a campaign that ended
/// unsent, `expired` or `refused`, by any version, since an arrival then is a new campaign), and
/// a row that is being fired or has fired never goes back to `scheduled` or `cancelled`.
///
/// [`decide`]: super::rules::decide
pub fn store_statement() -> String {
    STORE_VERSIONS_SQL
        .replace("{COLUMNS}", COLUMNS)
        .replace("{none}", &Version::NO_TIMESTAMP.to_string())
}

/// [`store_statement`]'s text, with `{COLUMNS}` and `{none}` (the timestamp of a version that
/// has none) to fill in.
const STORE_VERSIONS_SQL: &str = include_str!("store_versions.sql");

/// The recorder's two statements, prepared once per connection (reading the kept versions on
/// one, storing on the other, so that a read never waits behind a commit): a group of arrivals
/// costs two round trips, not a parse of each statement as well.
pub struct Prepared {
    kept: Statement,
    store: Statement,
}

impl Prepared {
    pub async fn new(reads: &Client, writes: &Client) -> Result<Prepared, tokio_postgres::Error> {
        let kept = reads.prepare(&kept_statement()).await?;
        let store = writes.prepare(&store_statement()).await?;
        Ok(Prepared { kept, store })
    }
}

/// The kept versions of `keys`.
pub async fn kept(
    client: &Client,
    prepared: &Prepared,
    keys: &[Key],
) -> Result<KeyMap<Kept>, tokio_postgres::Error> {
    let (restaurants, campaigns): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(r, c)| (r.as_str(), c.as_str())).unzip();
    let rows = client
        .query(&prepared.kept, &[&restaurants, &campaigns])
        .await?;
    let mut kept = KeyMap::with_capacity_and_hasher(rows.len(), Default::default());
    for row in rows {
        let campaign = campaign_of(&row)?;
        let source = SourceRef {
            topic: Arc::from(""),
            partition: row.try_get("source_partition")?,
            offset: row.try_get("source_offset")?,
            timestamp_ms: row.try_get("source_timestamp_ms")?,
        };
        let version = Version::of(&campaign, &source);
        kept.insert(
            key_of(&campaign),
            Kept {
                campaign,
                version,
                state: match row.try_get::<_, Option<i64>>("recalled_at")? {
                    Some(_) => State::Recalled,
                    None => state_of(&row)?,
                },
            },
        );
    }
    Ok(kept)
}

/// Stores each arrival as the campaign's version, in the state given (one statement; each key at
/// most once).
pub async fn store(
    client: &Client,
    prepared: &Prepared,
    rows: &[(&Arrival, State)],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let campaigns: Vec<&Campaign> = rows.iter().map(|(a, _)| &a.campaign).collect();
    let text = |f: fn(&Campaign) -> &str| -> Vec<&str> { campaigns.iter().map(|c| f(c)).collect() };
    let int = |f: fn(&Campaign) -> i64| -> Vec<i64> { campaigns.iter().map(|c| f(c)).collect() };
    let topics: Vec<&str> = rows.iter().map(|(a, _)| &*a.source.topic).collect();
    let partitions: Vec<i32> = rows.iter().map(|(a, _)| a.source.partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|(a, _)| a.source.offset).collect();
    let timestamps: Vec<Option<i64>> = rows.iter().map(|(a, _)| a.source.timestamp_ms).collect();
    let keys: Vec<Option<&[u8]>> = rows.iter().map(|(a, _)| a.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|(a, _)| a.payload.as_slice()).collect();
    let states: Vec<&str> = rows.iter().map(|(_, s)| s.as_str()).collect();
    client
        .execute(
            &prepared.store,
            &[
                &text(|c| &c.restaurant_id),
                &text(|c| &c.adv_campaign_id),
                &text(|c| &c.adv_campaign_content),
                &text(|c| &c.adv_campaign_owner),
                &text(|c| &c.adv_campaign_owner_contact),
                &int(|c| c.adv_campaign_datetime_start),
                &int(|c| c.adv_campaign_datetime_end),
                &int(|c| c.datetime_created),
                &topics,
                &partitions,
                &offsets,
                &timestamps,
                &keys,
                &payloads,
                &states,
            ],
        )
        .await?;
    Ok(())
}

/// A due campaign this instance has claimed.
#[derive(Debug)]
pub struct Claimed {
    pub arrival: Arrival,
    /// Another instance had claimed it and died before it was done.
    pub taken_over: bool,
    /// Its restaurant's subscribers when it was claimed.
    pub audience: usize,
}

/// Claims up to `limit` campaigns to fire, oldest start first, and marks them `firing` by `me`:
/// those scheduled to start at or before `now`, and those another instance was firing when it
/// was fenced (its lease expired) or died. Rows another instance is claiming at the same moment
/// are skipped, so each goes to one instance. A fenced `me` claims nothing.
///
/// It claims only what `budget` notifications can take: each due campaign's audience is counted
/// (through the index on `subscribers_restaurants.restaurant_id`), and campaigns are taken in
/// order while the audiences of those before stay below the budget, so at least one and at most
/// one campaign beyond the budget. The rest stay due for this instance's next claim, once what it
/// fires is confirmed, or for another instance's: a burst is spread over the instances.
pub async fn claim_due(
    client: &Client,
    now: i64,
    me: i32,
    limit: i64,
    budget: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            &claim_due_statement(),
            &[&now, &me, &limit, &i64::from(LOCK_CLASS), &budget.max(1)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let was: &str = row.try_get("was")?;
            let audience: i64 = row.try_get("audience")?;
            Ok(Claimed {
                arrival: arrival_of(row)?,
                taken_over: was == "firing",
                audience: audience.max(0) as usize,
            })
        })
        .collect()
}

/// [`claim_due`]'s text, with `{c.COLUMNS}` (each of [`COLUMNS`] of the claimed row `c`) to fill
/// in.
const CLAIM_DUE_SQL: &str = include_str!("store_claim_due.sql");

fn claim_due_statement() -> String {
    let claimed = COLUMNS
        .split(", ")
        .map(|col| format!("c.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    CLAIM_DUE_SQL.replace("{c.COLUMNS}", &claimed)
}

/// Moves campaigns this instance is firing to `state` (`active` once fired, `refused`,
/// `expired`, or back to `scheduled` to be claimed again). Rows changed meanwhile (a newer version
/// stored, another instance's claim) are left as they are, and so is everything once `me` is
/// fenced (the instance that takes its campaigns over settles them).
pub async fn settle(
    client: &Client,
    keys: &[Key],
    state: State,
    me: i32,
) -> Result<u64, tokio_postgres::Error> {
    let (restaurants, campaigns): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(r, c)| (r.as_str(), c.as_str())).unzip();
    client
        .execute(
            "UPDATE public.campaign_notifier_campaigns
             SET state = $3, owner = CASE WHEN $3 = 'scheduled' THEN NULL ELSE owner END,
                 fired_at = CASE WHEN $3 = 'active' THEN now() ELSE fired_at END,
                 -- Ended unsent, or in the dead-letter topic: it never fires, nothing of its
                 -- message is needed.
                 message = CASE WHEN $3 IN ('expired', 'refused') THEN ''::bytea ELSE message END,
                 message_key = CASE WHEN $3 IN ('expired', 'refused') THEN NULL ELSE message_key END,
                 updated_at = now()
             WHERE (restaurant_id, adv_campaign_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
               AND state = 'firing' AND owner = $4
               AND EXISTS (SELECT 1 FROM public.campaign_notifier_owners o
                           WHERE o.owner = $4 AND o.fenced_at IS NULL)",
            &[&restaurants, &campaigns, &state.as_str(), &me],
        )
        .await
}

/// Marks campaigns to fire again that this instance had claimed and did not finish (it
/// restarted in between): they go back to `scheduled`.
pub async fn release_own(client: &Client, me: i32) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE public.campaign_notifier_campaigns
             SET state = 'scheduled', owner = NULL, updated_at = now()
             WHERE state = 'firing' AND owner = $1",
            &[&me],
        )
        .await
}

/// How many campaigns are scheduled, and how many of them have a start at or before `now` (due:
/// inside quiet hours, held).
pub async fn count_scheduled(
    client: &Client,
    now: i64,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE adv_campaign_datetime_start <= $1)
             FROM public.campaign_notifier_campaigns WHERE state = 'scheduled'",
            &[&now],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Rows deleted at once by [`forget`], so that no statement holds many row locks or runs long.
pub const FORGET_PAGE: i64 = 10_000;

/// Deletes up to [`FORGET_PAGE`] campaigns that nothing needs any more: those whose end (plus
/// `grace_secs`) is more than `retain_ended_secs` before `now` (nothing of them can be sent any
/// more, and a late re-send is dead-lettered as ended), and those that fired, were cancelled or
/// ended unsent and have not changed for `retain_secs`, however far ahead their end is. Scheduled
/// campaigns (they have yet to fire) and those being fired are kept. Returns how many went.
pub async fn forget(
    client: &Client,
    now: i64,
    grace_secs: i64,
    retain_ended_secs: i64,
    retain_secs: f64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM public.campaign_notifier_campaigns WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM public.campaign_notifier_campaigns
                 WHERE state NOT IN ('scheduled', 'firing')
                   AND (adv_campaign_datetime_end + $2::int8 < $1::int8 - $3::int8
                        OR updated_at < now() - make_interval(secs => $4))
                 LIMIT $5))",
            &[
                &now,
                &grace_secs,
                &retain_ended_secs,
                &retain_secs,
                &FORGET_PAGE,
            ],
        )
        .await
}

/// The subscribers of `restaurants` as they are now, read fresh from `subscribers_restaurants`
/// (so that who unsubscribed since the last reload of the cache is not notified), streamed into
/// a snapshot of their own.
pub async fn subscribers_of(
    client: &Client,
    restaurants: &[&str],
) -> Result<Snapshot, tokio_postgres::Error> {
    let stream = client
        .query_raw(
            "SELECT restaurant_id, client_id FROM public.subscribers_restaurants
             WHERE restaurant_id = ANY($1)",
            [&restaurants],
        )
        .await?;
    pin_mut!(stream);
    let mut builder = SnapshotBuilder::new();
    while let Some(row) = stream.try_next().await? {
        let restaurant: &str = row.try_get(0)?;
        let client_id: &str = row.try_get(1)?;
        builder.push(restaurant, client_id);
    }
    Ok(builder.build())
}

/// A slice of one restaurant's subscribers as they are now: at most `limit` rows of
/// `subscribers_restaurants` with an `id` above `after`, in `id` order (a range of the index on
/// `(restaurant_id, id)`), with the last id read (`None` once none is left).
pub async fn subscribers_slice(
    client: &Client,
    restaurant: &str,
    after: i64,
    limit: i64,
) -> Result<(Snapshot, Option<i64>), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id::int8, client_id FROM public.subscribers_restaurants
             WHERE restaurant_id = $1 AND id > $2::int8
             ORDER BY id
             LIMIT $3",
            &[&restaurant, &after, &limit],
        )
        .await?;
    let mut builder = SnapshotBuilder::new();
    let mut last = None;
    for row in &rows {
        last = Some(row.try_get::<_, i64>(0)?);
        builder.push(restaurant, row.try_get(1)?);
    }
    Ok((builder.build(), last))
}

/// The role, in `campaign_notifier_leaders`, of the one instance that follows the change feed.
const FEED_ROLE: &str = "change_feed";

/// What the change feed follows: new rows of `subscribers_restaurants` by `id`, or the rows of
/// `campaign_notifier_pair_changes` by `seq` (where the changes are followed). Each has its mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    Ids,
    Changes,
}

impl FeedKind {
    /// Its row of `campaign_notifier_feed`.
    fn name(self) -> &'static str {
        match self {
            FeedKind::Ids => "subscribers_restaurants",
            FeedKind::Changes => "pair_changes",
        }
    }

    fn table(self) -> &'static str {
        match self {
            FeedKind::Ids => "public.subscribers_restaurants",
            FeedKind::Changes => "public.campaign_notifier_pair_changes",
        }
    }

    fn serial(self) -> &'static str {
        match self {
            FeedKind::Ids => "id",
            FeedKind::Changes => "seq",
        }
    }
}

/// Makes `me` the follower of the change feed if nobody is, or its follower's lease is not
/// live; true when `me` follows it now.
pub async fn try_lead_feed(client: &Client, me: i32) -> Result<bool, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO public.campaign_notifier_leaders (role, owner) VALUES ($1, $2)
             ON CONFLICT (role) DO UPDATE SET owner = EXCLUDED.owner, since = now()
             WHERE campaign_notifier_leaders.owner <> EXCLUDED.owner AND NOT EXISTS (
                 SELECT 1 FROM public.campaign_notifier_owners o
                 WHERE o.owner = campaign_notifier_leaders.owner
                   AND o.fenced_at IS NULL AND o.expires_at > now())",
            &[&FEED_ROLE, &me],
        )
        .await?;
    leads_feed(client, me).await
}

/// Whether `me` is the change feed's follower.
pub async fn leads_feed(client: &Client, me: i32) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT owner = $2 FROM public.campaign_notifier_leaders WHERE role = $1",
            &[&FEED_ROLE, &me],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Where the feed stands, as recorded: every subscription whose id is at or below `last_id` has
/// been followed, in the table whose storage was `filenode` then (`None`: recorded by a version
/// of the service that did not keep it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedMark {
    pub last_id: i64,
    pub filenode: Option<i64>,
}

/// The feed's recorded mark. The first time, the table's current highest id: subscriptions
/// from before the service existed are no one's late subscriptions.
pub async fn feed_position(
    client: &Client,
    kind: FeedKind,
) -> Result<FeedMark, tokio_postgres::Error> {
    let (table, serial) = (kind.table(), kind.serial());
    client
        .execute(
            &format!(
                "INSERT INTO public.campaign_notifier_feed (name, last_id, table_filenode)
                 SELECT $1, coalesce(max({serial}), 0)::int8,
                        pg_relation_filenode('{table}')::int8
                 FROM {table}
                 ON CONFLICT (name) DO NOTHING"
            ),
            &[&kind.name()],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT last_id, table_filenode FROM public.campaign_notifier_feed WHERE name = $1",
            &[&kind.name()],
        )
        .await?;
    Ok(FeedMark {
        last_id: row.try_get(0)?,
        filenode: row.try_get(1)?,
    })
}

/// The storage id of the feed's table now; `TRUNCATE` changes it.
pub async fn table_filenode(client: &Client, kind: FeedKind) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT pg_relation_filenode('{}')::int8", kind.table()),
            &[],
        )
        .await?;
    row.try_get(0)
}

/// Up to `limit` subscriptions after `position`, in id order: (id, restaurant, client).
pub async fn subscriptions_after(
    client: &Client,
    position: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id::int8, restaurant_id, client_id FROM public.subscribers_restaurants
             WHERE id > $1::int8 ORDER BY id LIMIT $2",
            &[&position, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// The subscriptions among `ids` that exist now (the feed's gaps that showed up).
pub async fn subscriptions_in(
    client: &Client,
    ids: &[i64],
) -> Result<Vec<(i64, String, String)>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id::int8, restaurant_id, client_id FROM public.subscribers_restaurants
             WHERE id = ANY($1::int8[]) ORDER BY id",
            &[&ids],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Records the feed's mark, if `me` still follows it; false when it does not any more. The mark
/// may move back (a gap waited for, a truncated table followed again from its start).
pub async fn advance_feed(
    client: &Client,
    kind: FeedKind,
    mark: FeedMark,
    me: i32,
) -> Result<bool, tokio_postgres::Error> {
    let advanced = client
        .execute(
            "UPDATE public.campaign_notifier_feed
             SET last_id = $2, table_filenode = $5, updated_at = now()
             WHERE name = $1 AND EXISTS (SELECT 1 FROM public.campaign_notifier_leaders
                                         WHERE role = $3 AND owner = $4)",
            &[&kind.name(), &mark.last_id, &FEED_ROLE, &me, &mark.filenode],
        )
        .await?;
    Ok(advanced == 1)
}

/// Up to `limit` restaurants with campaigns active at `now`, in their order, after `after`: a page
/// of what the reload's comparison looks at, read without the campaigns themselves.
pub async fn active_restaurants(
    client: &Client,
    after: &str,
    limit: i64,
    now: i64,
    window: &Window,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT restaurant_id FROM public.campaign_notifier_campaigns
             WHERE state IN ('active', 'firing')
               AND adv_campaign_datetime_start <= $1::int8 + $2::int8
               AND adv_campaign_datetime_end + $3::int8 >= $1::int8
               AND restaurant_id > $4
             ORDER BY restaurant_id LIMIT $5",
            &[
                &now,
                &window.clock_skew_secs,
                &window.end_grace_secs,
                &after,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// The campaigns recalled (docs/design.md, "Recall"), found by their partial index.
pub async fn recalled(
    client: &Client,
) -> Result<std::collections::HashSet<Key>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT restaurant_id, adv_campaign_id FROM public.campaign_notifier_campaigns
             WHERE recalled_at IS NOT NULL",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The campaigns active at `now` (fired or being fired, started, not over, not recalled), of
/// `restaurants` only, or all of them.
pub async fn active_campaigns(
    client: &Client,
    restaurants: Option<&[&str]>,
    now: i64,
    window: &Window,
) -> Result<Vec<Arrival>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM public.campaign_notifier_campaigns
                 WHERE state IN ('active', 'firing') AND recalled_at IS NULL
                   AND adv_campaign_datetime_start <= $1::int8 + $2::int8
                   AND adv_campaign_datetime_end + $3::int8 >= $1::int8
                   AND ($4::text[] IS NULL OR restaurant_id = ANY($4))"
            ),
            &[
                &now,
                &window.clock_skew_secs,
                &window.end_grace_secs,
                &restaurants,
            ],
        )
        .await?;
    rows.iter().map(arrival_of).collect()
}
