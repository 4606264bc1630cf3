//! The changes the benchmark commits: to `subscribers_restaurants`, which the service follows, or
//! to a twin of it nobody follows (the control: what the same changes cost the machine without
//! the service following them).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use campaign_actors::cache::Subscribers;
use campaign_bench::setup::{connect, err, BenchResult};
use tokio::sync::mpsc;

use crate::{new_client, pg, restaurant, seeded_client, Layout};

/// The table nobody follows: `subscribers_restaurants`' columns, indexes and replica identity,
/// with a part of its pairs.
pub const TWIN: &str = "bench_unfollowed_pairs";

/// Pairs copied into the twin: more than the changes of its phases touch.
pub const TWIN_PAIRS: u64 = 1_000_000;

/// One change of the table, as committed.
pub enum Change {
    Insert { restaurant: u64, client: String },
    Delete { id: u64, restaurant: u64 },
    Move { id: u64, from: u64, to: u64 },
}

/// A change committed, and what the view shows once it has it.
pub struct Committed {
    pub at: Instant,
    /// (restaurant, client) the view holds then...
    present: Option<(String, String)>,
    /// ...and the one it no longer holds.
    absent: Option<(String, String)>,
}

impl Committed {
    fn new(change: &Change, at: Instant) -> Committed {
        let (present, absent) = match change {
            Change::Insert {
                restaurant: r,
                client,
            } => (Some((restaurant(*r), client.clone())), None),
            Change::Delete { id, restaurant: r } => {
                (None, Some((restaurant(*r), seeded_client(*id))))
            }
            Change::Move { id, from, to } => (
                Some((restaurant(*to), seeded_client(*id))),
                Some((restaurant(*from), seeded_client(*id))),
            ),
        };
        Committed {
            at,
            present,
            absent,
        }
    }

    pub fn shown_in(&self, view: &Subscribers) -> bool {
        self.present
            .as_ref()
            .is_none_or(|(r, c)| view.contains(r, c))
            && self
                .absent
                .as_ref()
                .is_none_or(|(r, c)| !view.contains(r, c))
    }
}

/// The changes to make to one table: each of its seeded pairs touched once at most, never at the
/// campaigns' restaurants; kept from one phase to the next.
pub struct Picker {
    layout: Layout,
    /// The seeded ids it touches: from the first at a changed restaurant, `ids` of them.
    ids: u64,
    rng: u64,
    used: HashSet<u64>,
    /// Changes made so far.
    made: u64,
}

impl Picker {
    /// Changes to `subscribers_restaurants` (`ids`: every pair past the campaigns'
    /// restaurants) or to the twin (the first [`TWIN_PAIRS`] of them, copied).
    pub fn new(layout: Layout, ids: u64, seed: u64) -> Picker {
        Picker {
            layout,
            ids: ids.min(layout.pairs - layout.first_changed_id() + 1),
            rng: seed,
            used: HashSet::new(),
            made: 0,
        }
    }

    /// splitmix64: enough randomness to spread the changes, no dependency for it.
    fn random(&mut self, below: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below
    }

    fn restaurant(&mut self) -> u64 {
        let first = self.layout.first_changed();
        first + self.random(self.layout.restaurants() - first)
    }

    /// A seeded pair not touched yet.
    fn pair(&mut self) -> u64 {
        let first = self.layout.first_changed_id();
        loop {
            let id = first + self.random(self.ids);
            if self.used.insert(id) {
                return id;
            }
        }
    }

    fn next(&mut self) -> Change {
        let k = self.made;
        self.made += 1;
        match k % 3 {
            0 => Change::Insert {
                restaurant: self.restaurant(),
                client: new_client(k),
            },
            1 => {
                let id = self.pair();
                let restaurant = self.layout.restaurant_of(id);
                Change::Delete { id, restaurant }
            }
            _ => {
                let id = self.pair();
                let from = self.layout.restaurant_of(id);
                let to = loop {
                    let to = self.restaurant();
                    if to != from {
                        break to;
                    }
                };
                Change::Move { id, from, to }
            }
        }
    }
}

/// What the change generator did in a phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Made {
    pub changes: u64,
    pub secs: f64,
    /// Changes the server answered touched no row (should be none).
    pub missed: u64,
    /// How late the generator was on its schedule at worst.
    pub behind_max_secs: f64,
}

impl Made {
    /// Both phases' changes together.
    pub fn and(self, other: Made) -> Made {
        Made {
            changes: self.changes + other.changes,
            secs: self.secs + other.secs,
            missed: self.missed + other.missed,
            behind_max_secs: self.behind_max_secs.max(other.behind_max_secs),
        }
    }
}

/// Commits `per_s` changes a second to `table` on a connection and a thread of its own until
/// `stop`, sending each, once committed, to `committed` if given; hands the picker back.
pub fn start_changes(
    db_url: String,
    table: &'static str,
    mut picker: Picker,
    per_s: u64,
    stop: Arc<AtomicBool>,
    committed: Option<mpsc::UnboundedSender<Committed>>,
) -> std::thread::JoinHandle<BenchResult<(Made, Picker)>> {
    let run = move || {
        // The service's connections spawn their tasks on the current thread's local set.
        let runtime = actix_rt::Runtime::new().map_err(err("the change generator's runtime"))?;
        let made = runtime.block_on(make_changes(
            &db_url,
            table,
            &mut picker,
            per_s,
            &stop,
            committed,
        ))?;
        Ok((made, picker))
    };
    std::thread::Builder::new()
        .name("bench-changes".into())
        .spawn(run)
        .expect("a thread for the change generator")
}

async fn make_changes(
    db_url: &str,
    table: &str,
    picker: &mut Picker,
    per_s: u64,
    stop: &AtomicBool,
    committed: Option<mpsc::UnboundedSender<Committed>>,
) -> BenchResult<Made> {
    let db = connect(db_url).await?;
    let insert = format!("INSERT INTO {table} (restaurant_id, client_id) VALUES ($1, $2)");
    let delete = format!("DELETE FROM {table} WHERE id = $1");
    let update = format!("UPDATE {table} SET restaurant_id = $2 WHERE id = $1");
    let insert = db
        .prepare(&insert)
        .await
        .map_err(pg("prepare the insert"))?;
    let delete = db
        .prepare(&delete)
        .await
        .map_err(pg("prepare the delete"))?;
    let update = db.prepare(&update).await.map_err(pg("prepare the move"))?;
    let started = tokio::time::Instant::now();
    let (mut k, mut missed, mut behind_max_secs) = (0, 0, 0f64);
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_secs_f64(k as f64 / per_s as f64);
        tokio::time::sleep_until(due).await;
        behind_max_secs = behind_max_secs.max(due.elapsed().as_secs_f64());
        let change = picker.next();
        let rows = match &change {
            Change::Insert {
                restaurant: r,
                client,
            } => db.execute(&insert, &[&restaurant(*r), client]).await,
            Change::Delete { id, .. } => db.execute(&delete, &[&(*id as i32)]).await,
            Change::Move { id, to, .. } => {
                db.execute(&update, &[&(*id as i32), &restaurant(*to)])
                    .await
            }
        }
        .map_err(pg("commit a change"))?;
        let at = Instant::now();
        k += 1;
        match (rows, &committed) {
            (1, Some(committed)) => drop(committed.send(Committed::new(&change, at))),
            (1, None) => {}
            _ => missed += 1,
        }
    }
    Ok(Made {
        changes: k,
        secs: started.elapsed().as_secs_f64(),
        missed,
        behind_max_secs,
    })
}

/// Makes the twin: `subscribers_restaurants`' shape and replica identity, and the first
/// [`TWIN_PAIRS`] pairs past the campaigns' restaurants, which its picker touches.
pub async fn make_twin(db: &tokio_postgres::Client, layout: &Layout) -> BenchResult<()> {
    let first = layout.first_changed_id() as i64;
    db.batch_execute(&format!(
        "CREATE TABLE {TWIN} (LIKE public.subscribers_restaurants INCLUDING ALL);
         ALTER TABLE {TWIN} REPLICA IDENTITY FULL"
    ))
    .await
    .map_err(pg("create the twin table"))?;
    db.execute(
        &format!(
            "INSERT INTO {TWIN} SELECT * FROM public.subscribers_restaurants
             WHERE id >= $1::int8 AND id < $1::int8 + $2::int8"
        ),
        &[&first, &(TWIN_PAIRS as i64)],
    )
    .await
    .map_err(pg("fill the twin table"))?;
    db.batch_execute(&format!("VACUUM ANALYZE {TWIN}"))
        .await
        .map_err(pg("vacuum the twin table"))?;
    Ok(())
}
