//! Many campaigns starting together, and audiences larger than the fire budget: claimed and read
//! within `writers.max_notifications_in_flight`, each notification once.

use std::time::{Duration, Instant};

use super::*;

/// A lunchtime burst: 200 campaigns of 500 subscribers each start in the same second, with room
/// for 5 000 notifications in flight. Each instance claims only what its budget can take (ten
/// campaigns, and one beyond), so the campaigns being fired at once stay within the budget, the
/// two instances take the burst in turn, and everything goes out once.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_campaigns_starting_together_is_claimed_within_the_budget_by_both_instances() {
    const CAMPAIGNS: i32 = 200;
    const AUDIENCE: i32 = 500;
    const BUDGET: i64 = 5_000;
    let f = Fixture::new("burst", 2).await;
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'burst-' || r, 'burst-client-' || c
         FROM generate_series(1, $1) r, generate_series(1, $2) c",
        &[&CAMPAIGNS, &AUDIENCE],
    )
    .await
    .expect("subscribe");
    let config = format!("[writers]\nmax_notifications_in_flight = {BUDGET}\n");
    let a = Service::start_numbered(&f, &config, 0);
    let b = Service::start_numbered(&f, &config, 1);
    let start = unix_now() + 8;
    for r in 1..=CAMPAIGNS {
        let restaurant = format!("burst-{r}");
        let c = version(
            &restaurant,
            &format!("c-burst-{r}"),
            "lunch",
            (start, start + 3600),
            1,
        );
        f.produce(&restaurant, c.as_bytes()).await;
    }
    let total = i64::from(CAMPAIGNS * AUDIENCE);
    let most = watch_the_burst_fire(&f, [&a, &b], i64::from(CAMPAIGNS), total).await;
    println!(
        "most campaigns being fired at once: {}; most notifications claimed by each \
         instance: {:?}",
        most.firing, most.notifications
    );
    // Each instance fires at most the budget's worth (ten campaigns) and one beyond it; a
    // campaign confirmed stays `firing` in the table until its state is settled, a moment later,
    // hence the room for a third.
    most.assert_within(BUDGET, i64::from(AUDIENCE));
    let (by_a, by_b) = (event(&a, "fired"), event(&b, "fired"));
    println!("fired by the first instance: {by_a}, by the second: {by_b}");
    assert_eq!(by_a + by_b, f64::from(CAMPAIGNS));
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "one instance took the whole burst"
    );
    wait_both_sinks(&f, total, Duration::from_secs(60), || a.log_text()).await;
    assert_each_once_in_both_sinks(&f, total).await;
    drop((a, b));
    f.cleanup().await;
}

/// The most seen at once while a burst fired.
struct Most {
    /// Campaigns `firing` in the table.
    firing: i64,
    /// Notifications each instance had claimed (`campaign_notifier_notifications_firing`).
    notifications: [f64; 2],
}

impl Most {
    /// At most three instances' worth of the budget (ten campaigns and one beyond each) firing,
    /// and each instance's claim some, at most the budget and one campaign.
    fn assert_within(&self, budget: i64, audience: i64) {
        let most_firing = self.firing;
        let bound = 3 * (budget / audience + 1);
        assert!(
            most_firing <= bound,
            "{most_firing} campaigns were being fired at once; the budget allows {bound}"
        );
        for most in self.notifications {
            assert!(most > 0.0 && most <= (budget + audience) as f64, "{most}");
        }
    }
}

/// Polls every 20 ms, for up to 180 s, until all `campaigns` are active and Postgres holds `total`
/// notifications; returns the most seen at once meanwhile.
async fn watch_the_burst_fire(f: &Fixture, instances: [&Service; 2], campaigns: i64, total: i64) -> Most {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut most = Most {
        firing: 0,
        notifications: [0.0; 2],
    };
    loop {
        let (firing, active) = firing_and_active(f).await;
        most.firing = most.firing.max(firing);
        for (i, s) in instances.into_iter().enumerate() {
            most.notifications[i] =
                most.notifications[i].max(s.metric("campaign_notifier_notifications_firing"));
        }
        if active == campaigns && f.feedback_count().await >= total {
            return most;
        }
        assert!(
            Instant::now() < deadline,
            "{active} of {campaigns} fired after 180 s:\n{}",
            instances[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Campaigns `firing` and campaigns `active` in the table.
async fn firing_and_active(f: &Fixture) -> (i64, i64) {
    let row =
        f.db.query_one(
            "SELECT count(*) FILTER (WHERE state = 'firing'),
                    count(*) FILTER (WHERE state = 'active')
             FROM campaign_notifier_campaigns",
            &[],
        )
        .await
        .expect("count the states");
    (row.get(0), row.get(1))
}

/// A scheduled campaign whose audience is larger than the budget is read from Postgres a slice
/// at a time as it fires, each slice confirmed before the next is read (today's version read all
/// 12 500 subscribers in one statement and held them until the campaign was done), and still
/// notifies each subscriber once in both sinks; small campaigns claimed with it are read together.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_audience_is_read_and_fired_a_slice_at_a_time_and_notified_once() {
    const LARGE: i32 = 12_500;
    const BUDGET: i64 = 1_000;
    let f = Fixture::new("slices", 1).await;
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'slices-large', 'slices-client-' || c FROM generate_series(1, $1) c",
        &[&LARGE],
    )
    .await
    .expect("subscribe");
    let small = clients("slices-small", 20);
    subscribe_all(&f, "slices-small", &small).await;
    let config = format!("[writers]\nmax_notifications_in_flight = {BUDGET}\n");
    let service = Service::start(&f, &config);
    let start = unix_now() + 6;
    for (restaurant, id) in [("slices-large", "c-large"), ("slices-small", "c-small")] {
        let c = version(restaurant, id, "lunch", (start, start + 3600), 1);
        f.produce(restaurant, c.as_bytes()).await;
    }
    let total = i64::from(LARGE) + small.len() as i64;
    wait_both_sinks(&f, total, Duration::from_secs(120), || service.log_text()).await;
    for id in ["c-large", "c-small"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state_of(&f, id).await.as_deref() != Some("active") {
            assert!(
                Instant::now() < deadline,
                "{id}: {:?}",
                state_of(&f, id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let reads = service.metric("campaign_notifier_fire_audience_read_subscribers_count");
    let read = service.metric("campaign_notifier_fire_audience_read_subscribers_sum");
    let within = service.metric_with(
        "campaign_notifier_fire_audience_read_subscribers_bucket",
        "le=\"1000\"",
    );
    println!("{reads} reads of {read} subscribers in all, {within} of at most {BUDGET}");
    assert_eq!(read, total as f64, "every subscriber read once");
    let slices = (i64::from(LARGE) + BUDGET - 1) / BUDGET;
    assert!(
        reads >= slices as f64 + 1.0,
        "{reads} reads: the large audience was not read in slices of {BUDGET}"
    );
    assert_eq!(within, reads, "a read was larger than the budget");
    assert_each_once_in_both_sinks(&f, total).await;
    assert_eq!(event(&service, "fired"), 2.0);
    drop(service);
    f.cleanup().await;
}
