use super::*;
use crate::metrics::{Metrics, SinkKind};
use std::collections::HashSet;
use std::sync::Mutex;

/// What the in-memory sink does on its next connect or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The connection fails before anything is written.
    Fail,
    /// The write lands, then the connection fails before the answer (a lost acknowledgement).
    LandThenFail,
}

/// The sink's state, shared with the test: what it holds and what it is told to do.
#[derive(Debug, Default)]
struct Script {
    stored: Vec<u32>,
    connect_faults: VecDeque<Fault>,
    write_faults: VecDeque<Fault>,
    /// Ids the sink refuses for good, whatever group they are in.
    refused: HashSet<u32>,
    /// Every write is refused for good (a setup fault, not the data's).
    refuse_all: bool,
    /// Ids whose writes fail with a retriable error, every time (a poison the sink misreports).
    failing: HashSet<u32>,
    /// Ids whose next writes lose their connection, this many times each (a server whose
    /// sessions are cut from outside while this job happens to be written).
    cut: std::collections::HashMap<u32, u32>,
    /// A refusal lands the rest of the group (as a broker acknowledges the other records of
    /// a produce request it refuses one record of).
    refusal_lands_the_rest: bool,
    connects: u32,
    reconciled: Vec<Vec<u32>>,
    groups: Vec<Vec<u32>>,
    write_delay: Duration,
    /// Asked before every write, as the real sinks ask theirs.
    lease: Option<crate::lease::Lease>,
}

#[derive(Clone, Default)]
struct Handle(Arc<Mutex<Script>>);

impl Handle {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

/// One job: ids, as a notification batch carries clients.
#[derive(Debug)]
struct Ids(Vec<u32>);

impl Rows for Ids {
    fn rows(&self) -> usize {
        self.0.len()
    }
}

struct MemorySink(Handle);

impl Sink for MemorySink {
    const KIND: SinkKind = SinkKind::Postgres;
    const MAX_CONCURRENT_WRITES: usize = 1;
    type Config = Handle;
    type Item = Ids;
    type Output = usize;

    fn connect(shared: Handle) -> LocalFuture<Result<Self, SinkError>> {
        Box::pin(async move {
            let fault = shared.with(|s| {
                s.connects += 1;
                s.connect_faults.pop_front()
            });
            match fault {
                Some(_) => Err(SinkError::Retriable("connection refused".into())),
                None => Ok(MemorySink(shared)),
            }
        })
    }

    fn write(&self, items: Vec<Arc<Ids>>) -> LocalFuture<Result<Vec<usize>, SinkError>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let delay = shared.with(|s| s.write_delay);
            actix_rt::time::sleep(delay).await;
            shared.with(|s| {
                if let Some(Err(lapsed)) = s.lease.as_ref().map(|l| l.check()) {
                    return Err(SinkError::Lapsed(lapsed.to_string()));
                }
                let ids: Vec<u32> = items.iter().flat_map(|i| i.0.iter().copied()).collect();
                s.groups.push(ids.clone());
                if s.refuse_all {
                    return Err(SinkError::Permanent("column overflows".into()));
                }
                if ids.iter().any(|id| s.refused.contains(id)) {
                    if s.refusal_lands_the_rest {
                        let landed = ids.iter().filter(|id| !s.refused.contains(id));
                        s.stored.extend(landed);
                    }
                    return Err(SinkError::Permanent("value refused".into()));
                }
                if ids.iter().any(|id| s.failing.contains(id)) {
                    return Err(SinkError::Retriable("statement failed".into()));
                }
                let cut = ids.iter().find(|id| s.cut.get(id).is_some_and(|n| *n > 0));
                if let Some(id) = cut.copied() {
                    *s.cut.get_mut(&id).expect("found") -= 1;
                    return Err(SinkError::Disconnected(
                        "terminating connection due to administrator command".into(),
                    ));
                }
                match s.write_faults.pop_front() {
                    Some(Fault::Fail) => Err(SinkError::Retriable("connection reset".into())),
                    Some(Fault::LandThenFail) => {
                        s.stored.extend(ids);
                        Err(SinkError::Retriable("connection reset".into()))
                    }
                    None => {
                        s.stored.extend(ids);
                        Ok(items.iter().map(|i| i.0.len()).collect())
                    }
                }
            })
        })
    }

    fn reconcile(&self, items: Vec<Arc<Ids>>) -> LocalFuture<Result<Vec<Arc<Ids>>, SinkError>> {
        let shared = self.0.clone();
        Box::pin(async move {
            shared.with(|s| {
                s.reconciled
                    .push(items.iter().flat_map(|i| i.0.iter().copied()).collect());
                Ok(items
                    .iter()
                    .map(|i| {
                        Arc::new(Ids(i
                            .0
                            .iter()
                            .copied()
                            .filter(|id| !s.stored.contains(id))
                            .collect()))
                    })
                    .collect())
            })
        })
    }

    fn close(&self) -> LocalFuture<()> {
        Box::pin(async {})
    }

    fn is_connected(&self) -> bool {
        true
    }
}

fn settings() -> WriterSettings {
    WriterSettings {
        batch_max_rows: 1_000,
        linger: Duration::from_secs(1),
        stall_after: Duration::from_secs(30),
        restart: RestartPolicy {
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            limit: Some(20),
            window: Duration::from_secs(2),
        },
    }
}

type Fatal = tokio::sync::watch::Receiver<Option<crate::fatal::FatalReason>>;

fn start(handle: &Handle, settings: WriterSettings) -> (Addr<Writer<MemorySink>>, Metrics, Fatal) {
    let (shared, fatal) = Shared::new(Metrics::new(), crate::clock::Clock::system());
    start_with(handle, settings, shared, fatal)
}

fn start_with(
    handle: &Handle,
    settings: WriterSettings,
    shared: Shared,
    fatal: Fatal,
) -> (Addr<Writer<MemorySink>>, Metrics, Fatal) {
    let metrics = shared.metrics.clone();
    let handle = handle.clone();
    let addr = Supervisor::start(move |_| Writer::<MemorySink>::new(handle, settings, shared));
    (addr, metrics, fatal)
}

/// Sends every job at once, as the enricher does, and waits for every answer.
async fn write_all(
    addr: &Addr<Writer<MemorySink>>,
    jobs: &[&[u32]],
) -> Vec<Result<usize, SinkError>> {
    let sends = jobs
        .iter()
        .map(|ids| addr.send(Write::<MemorySink>(Arc::new(Ids(ids.to_vec())))));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|answer| answer.expect("writer alive"))
        .collect()
}

fn restarts(metrics: &Metrics) -> u64 {
    metrics
        .actor_restarts
        .with_label_values(&["postgres_writer"])
        .get()
}

fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids
}

#[actix_rt::test]
async fn a_retriable_error_restarts_the_writer_and_writes_the_same_jobs_again() {
    let shared = Handle::default();
    shared.with(|s| s.write_faults.push_back(Fault::Fail));
    let (addr, metrics, fatal) = start(&shared, settings());
    let answers = write_all(&addr, &[&[1, 2], &[3], &[4, 5, 6]]).await;
    assert_eq!(answers, vec![Ok(2), Ok(1), Ok(3)]);
    assert_eq!(
        shared.with(|s| sorted(s.stored.clone())),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(shared.with(|s| s.connects), 2, "one reconnect");
    assert_eq!(restarts(&metrics), 1);
    assert!(fatal.borrow().is_none());
}

#[actix_rt::test]
async fn a_job_refused_for_good_is_isolated_and_the_rest_of_its_group_is_written() {
    let shared = Handle::default();
    shared.with(|s| {
        s.refused.insert(40);
        // The first write is still out while the others arrive, so they form one group.
        s.write_delay = Duration::from_millis(50);
    });
    let (addr, metrics, _fatal) = start(&shared, settings());
    let answers = write_all(&addr, &[&[1], &[2], &[30, 40], &[5]]).await;
    assert_eq!(answers[0], Ok(1));
    assert_eq!(answers[1], Ok(1));
    assert!(
        matches!(answers[2], Err(SinkError::Permanent(_))),
        "{answers:?}"
    );
    assert_eq!(answers[3], Ok(1));
    let groups = shared.with(|s| s.groups.clone());
    assert!(
        groups.contains(&vec![2, 30, 40, 5]),
        "the three later jobs were first written as one group: {groups:?}"
    );
    assert_eq!(shared.with(|s| sorted(s.stored.clone())), vec![1, 2, 5]);
    assert_eq!(
        restarts(&metrics),
        0,
        "a refusal is not a connection failure"
    );
    assert_eq!(
        metrics
            .sink_write_errors
            .with_label_values(&["postgres", "permanent"])
            .get(),
        2,
        "the group, then the job alone"
    );
}

#[actix_rt::test]
async fn a_group_refused_in_part_is_reconciled_before_its_jobs_are_written_again() {
    let handle = Handle::default();
    handle.with(|s| {
        s.refused.insert(40);
        s.refusal_lands_the_rest = true;
        s.write_delay = Duration::from_millis(50);
    });
    let (addr, _metrics, _fatal) = start(&handle, settings());
    let answers = write_all(&addr, &[&[1], &[2], &[30, 40], &[5]]).await;
    assert!(
        matches!(answers[2], Err(SinkError::Permanent(_))),
        "{answers:?}"
    );
    assert_eq!(answers[1], Ok(0), "job 2 had landed with the refused group");
    assert_eq!(answers[3], Ok(0), "so had job 5");
    assert_eq!(
        handle.with(|s| sorted(s.stored.clone())),
        vec![1, 2, 5, 30],
        "each landed id once"
    );
}

/// Sends every job at once and waits at most `secs` for every answer.
async fn write_all_within(
    addr: &Addr<Writer<MemorySink>>,
    jobs: &[&[u32]],
    secs: u64,
) -> Vec<Result<usize, SinkError>> {
    tokio::time::timeout(Duration::from_secs(secs), write_all(addr, jobs))
        .await
        .expect("every job answered in time")
}

#[actix_rt::test]
async fn a_job_that_keeps_failing_while_others_go_through_is_isolated_and_refused() {
    let handle = Handle::default();
    handle.with(|s| {
        s.failing.insert(40);
        s.write_delay = Duration::from_millis(50);
    });
    let (addr, metrics, fatal) = start(&handle, settings());
    let answers = write_all_within(&addr, &[&[1], &[2], &[30, 40], &[5]], 10).await;
    assert_eq!(answers[0], Ok(1));
    assert_eq!(answers[1], Ok(1));
    match &answers[2] {
        Err(SinkError::Permanent(reason)) => {
            assert!(reason.contains("statement failed"), "{reason}")
        }
        other => panic!("the poison job: {other:?}"),
    }
    assert_eq!(answers[3], Ok(1));
    assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 5]);
    assert!(
        fatal.borrow().is_none(),
        "isolated before the restart limit"
    );
    assert!(restarts(&metrics) <= 4, "{} restarts", restarts(&metrics));
}

#[actix_rt::test]
async fn a_job_whose_connection_is_cut_again_and_again_while_others_go_through_is_written() {
    let handle = Handle::default();
    handle.with(|s| {
        s.cut.insert(40, 5);
        s.write_delay = Duration::from_millis(50);
    });
    let (addr, _metrics, fatal) = start(&handle, settings());
    let answers = write_all_within(&addr, &[&[1], &[2], &[30, 40], &[5], &[6]], 20).await;
    assert_eq!(
        answers[2],
        Ok(2),
        "a lost connection says nothing about the job"
    );
    assert_eq!(
        handle.with(|s| sorted(s.stored.clone())),
        vec![1, 2, 5, 6, 30, 40]
    );
    assert!(fatal.borrow().is_none());
}

#[actix_rt::test]
async fn a_sink_refusing_every_write_holds_the_jobs_and_takes_them_once_mended() {
    let handle = Handle::default();
    handle.with(|s| s.refuse_all = true);
    let (addr, metrics, _fatal) = start(&handle, settings());
    let jobs: [&[u32]; 4] = [&[1], &[2], &[3], &[4]];
    let sends = futures::future::join_all(
        jobs.iter()
            .map(|ids| addr.send(Write::<MemorySink>(Arc::new(Ids(ids.to_vec()))))),
    );
    let mut sends = Box::pin(sends);
    let early = tokio::time::timeout(Duration::from_secs(2), &mut sends).await;
    assert!(early.is_err(), "no job was answered as refused: {early:?}");
    let health = addr.send(Health).await.unwrap();
    assert!(health.fault.is_some_and(|f| f.contains("column overflows")));
    let fault = || metrics.sink_fault.with_label_values(&["postgres"]).get();
    assert_eq!(fault(), 1);
    // Mended: a probe goes through, and everything held is written.
    handle.with(|s| s.refuse_all = false);
    let answers = tokio::time::timeout(Duration::from_secs(15), sends)
        .await
        .expect("answered once mended");
    let answers: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(answers, vec![Ok(1), Ok(1), Ok(1), Ok(1)]);
    assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 3, 4]);
    assert_eq!(fault(), 0);
    assert!(addr.send(Health).await.unwrap().fault.is_none());
}

#[actix_rt::test]
async fn a_poison_job_last_of_its_burst_is_refused_without_more_traffic() {
    let handle = Handle::default();
    handle.with(|s| {
        s.failing.insert(40);
        s.write_delay = Duration::from_millis(50);
    });
    let (addr, _metrics, _fatal) = start(&handle, settings());
    // The poison is grouped with the burst's other job and nothing follows them.
    let answers = write_all_within(&addr, &[&[1], &[40], &[2]], 10).await;
    assert_eq!(answers[0], Ok(1));
    assert!(
        matches!(answers[1], Err(SinkError::Permanent(_))),
        "{answers:?}"
    );
    assert_eq!(answers[2], Ok(1));
}

#[actix_rt::test]
async fn a_job_that_fails_alone_with_no_other_write_going_through_is_not_refused() {
    let handle = Handle::default();
    handle.with(|s| s.failing.insert(7));
    let mut settings = settings();
    settings.restart.limit = Some(100);
    let (addr, _metrics, _fatal) = start(&handle, settings);
    let poison = addr.send(Write::<MemorySink>(Arc::new(Ids(vec![7]))));
    let mut poison = Box::pin(poison);
    // Alone, nothing says the sink is healthy: the job is held, tried again later, and kept.
    let early = tokio::time::timeout(Duration::from_millis(2500), &mut poison).await;
    assert!(early.is_err(), "answered without evidence: {early:?}");
    assert!(handle.with(|s| s.groups.len()) >= 2, "it was tried again");
    // Other writes going through are that evidence.
    for id in [8, 9] {
        let answers = write_all_within(&addr, &[&[id]], 10).await;
        assert_eq!(answers, vec![Ok(1)]);
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), poison)
        .await
        .expect("answered")
        .expect("writer alive");
    assert!(matches!(answer, Err(SinkError::Permanent(_))), "{answer:?}");
}

#[actix_rt::test]
async fn a_sink_failing_every_write_for_a_while_refuses_nothing() {
    let handle = Handle::default();
    handle.with(|s| s.write_faults.extend([Fault::Fail; 8]));
    let mut settings = settings();
    settings.restart.limit = Some(100);
    let (addr, _metrics, _fatal) = start(&handle, settings);
    let answers = write_all_within(&addr, &[&[1], &[2, 3], &[4]], 20).await;
    assert_eq!(answers, vec![Ok(1), Ok(2), Ok(1)]);
    assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 3, 4]);
}

#[actix_rt::test]
async fn after_a_reconnect_what_already_landed_is_not_written_again() {
    let shared = Handle::default();
    shared.with(|s| s.write_faults.push_back(Fault::LandThenFail));
    let (addr, _metrics, _fatal) = start(&shared, settings());
    let answers = write_all(&addr, &[&[1, 2, 3]]).await;
    assert_eq!(
        answers,
        vec![Ok(0)],
        "the retry found every row already there"
    );
    assert_eq!(
        shared.with(|s| s.stored.clone()),
        vec![1, 2, 3],
        "each id once"
    );
    assert_eq!(shared.with(|s| s.reconciled.clone()), vec![vec![1, 2, 3]]);
}

#[actix_rt::test]
async fn jobs_sent_while_the_sink_is_unreachable_are_kept_until_it_is_back() {
    let shared = Handle::default();
    shared.with(|s| {
        s.connect_faults
            .extend([Fault::Fail, Fault::Fail, Fault::Fail]);
    });
    let (addr, metrics, fatal) = start(&shared, settings());
    let answers = write_all(&addr, &[&[1], &[2]]).await;
    assert_eq!(answers, vec![Ok(1), Ok(1)]);
    assert_eq!(shared.with(|s| sorted(s.stored.clone())), vec![1, 2]);
    assert_eq!(shared.with(|s| s.connects), 4);
    assert_eq!(restarts(&metrics), 3);
    assert!(fatal.borrow().is_none());
}

#[actix_rt::test]
async fn restarting_beyond_the_limit_raises_the_fatal_reason() {
    let shared = Handle::default();
    shared.with(|s| s.connect_faults.extend([Fault::Fail; 10]));
    let mut settings = settings();
    settings.restart.limit = Some(2);
    settings.restart.window = Duration::from_secs(60);
    let (_addr, _metrics, mut fatal) = start(&shared, settings);
    let reason = tokio::time::timeout(Duration::from_secs(5), fatal.wait_for(Option::is_some))
        .await
        .expect("fatal within 5s")
        .expect("sender alive")
        .clone()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(reason.contains("restarted more than 2 times"), "{reason}");
}

#[actix_rt::test]
async fn a_writer_whose_lease_lapses_holds_its_jobs_and_writes_them_once_it_is_renewed() {
    let handle = Handle::default();
    let (shared, fatal) = Shared::with_lease(Metrics::new(), crate::clock::Clock::system());
    let lease = shared.lease.clone();
    lease.acquired(1);
    // Valid for half a second (the renewal's end less the margin).
    let ttl = crate::lease::MARGIN + Duration::from_millis(500);
    lease.renewed(Instant::now(), ttl);
    handle.with(|s| s.lease = Some(lease.clone()));
    let (addr, metrics, _fatal) = start_with(&handle, settings(), shared, fatal);
    assert_eq!(write_all(&addr, &[&[1]]).await, vec![Ok(1)]);

    actix_rt::time::sleep(Duration::from_millis(600)).await;
    assert!(!lease.is_valid());
    let held = addr.send(Write::<MemorySink>(Arc::new(Ids(vec![2]))));
    let held = actix_rt::spawn(held);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a job is held, not refused, while the lease is lapsed"
    );
    assert_eq!(handle.with(|s| s.stored.clone()), vec![1]);

    lease.renewed(Instant::now(), Duration::from_secs(10));
    let answer = held.await.expect("joined").expect("writer alive");
    assert_eq!(answer, Ok(1));
    assert_eq!(handle.with(|s| s.stored.clone()), vec![1, 2]);
    assert_eq!(restarts(&metrics), 0, "a lapse restarts nothing");
}

#[actix_rt::test]
async fn a_small_job_goes_ahead_of_the_large_ones_waiting_but_passes_each_a_bounded_amount() {
    let shared = Handle::default();
    // The first write is still out while the others arrive.
    shared.with(|s| s.write_delay = Duration::from_millis(50));
    let settings = WriterSettings {
        batch_max_rows: 10,
        ..settings()
    };
    let (addr, _metrics, _fatal) = start(&shared, settings);
    let large = |from: u32| (from..from + 10).collect::<Vec<u32>>();
    let (first, second, third) = (large(100), large(200), large(300));
    // Two large jobs wait behind the one being written; then small jobs of 5 rows arrive, nine
    // of them: the limit is PASS_OVER_BATCHES batches (40 rows) passing each large job.
    let smalls: Vec<Vec<u32>> = (0..9).map(|k| (k * 5..k * 5 + 5).collect()).collect();
    let mut jobs: Vec<&[u32]> = vec![&first, &second, &third];
    jobs.extend(smalls.iter().map(|s| &s[..]));
    let answers = write_all(&addr, &jobs).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let order: Vec<u32> = shared.with(|s| s.groups.concat());
    let at = |id: u32| order.iter().position(|&x| x == id).expect("written");
    // The first eight small jobs (40 rows) went ahead of the two large jobs waiting...
    for k in 0..8 {
        assert!(
            at(k * 5) < at(200),
            "small job {k} after a large one: {order:?}"
        );
    }
    // ...the ninth did not: the large ones had been passed over enough.
    assert!(at(40) > at(300), "{order:?}");
    // The large ones kept their order.
    assert!(at(100) < at(200) && at(200) < at(300));
}
