//! The campaigns recalled (docs/design.md, "Recall"): nothing more of them goes to either sink.
//!
//! Every instance keeps the set of the recalled campaigns' keys, read from
//! `campaign_notifier_campaigns` each `lifecycle.poll_interval_ms` by its lifecycle (and added to
//! at once where the recall is decided). The writers consult it beside each notification's
//! deadline: delivery before a slice goes to Postgres, the Kafka writer before each chunk is
//! handed to the broker. It is one shared set, replaced whole at each read, so a look-up is a
//! lock-free read of its current version.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// A recalled campaign: (restaurant, campaign).
pub type RecallKey = (String, String);

/// Recalled campaign ids by restaurant: looked up with borrowed ids, nothing allocated.
type ByRestaurant = HashMap<String, HashSet<String>>;

/// The recalled campaigns; cheap to clone (every clone is the same set).
#[derive(Clone, Default)]
pub struct Recalls(Arc<RwLock<Arc<ByRestaurant>>>);

impl Recalls {
    /// The set as it is now: a look-up after this does not take the lock.
    pub fn now(&self) -> Recalled {
        Recalled(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Replaces the set with what the table says.
    pub fn replace(&self, keys: HashSet<RecallKey>) {
        let mut by: ByRestaurant = HashMap::new();
        for (restaurant, campaign) in keys {
            by.entry(restaurant).or_default().insert(campaign);
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(by);
    }

    /// Adds one recall (decided here, before the next read of the table).
    pub fn add(&self, (restaurant, campaign): RecallKey) {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        if !Recalled(set.clone()).contains(&restaurant, &campaign) {
            let mut grown = ByRestaurant::clone(&set);
            grown.entry(restaurant).or_default().insert(campaign);
            *set = Arc::new(grown);
        }
    }

    pub fn contains(&self, restaurant: &str, campaign: &str) -> bool {
        self.now().contains(restaurant, campaign)
    }
}

/// The recalled campaigns at one moment.
pub struct Recalled(Arc<ByRestaurant>);

impl Recalled {
    pub fn contains(&self, restaurant: &str, campaign: &str) -> bool {
        self.0
            .get(restaurant)
            .is_some_and(|campaigns| campaigns.contains(campaign))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recall_is_seen_by_every_clone_until_the_table_no_longer_lists_it() {
        let recalls = Recalls::default();
        let writer = recalls.clone();
        assert!(!writer.contains("r", "c"));
        let before = writer.now();
        recalls.add(("r".into(), "c".into()));
        assert!(writer.contains("r", "c"));
        assert!(!writer.contains("r", "d"));
        // A look-up taken before keeps its moment.
        assert!(!before.contains("r", "c"));
        recalls.replace(HashSet::from([("r".into(), "d".into())]));
        assert!(!writer.contains("r", "c"));
        assert!(writer.contains("r", "d"));
    }
}
