//! `/metrics`, `/healthz` and `/readyz`, served by actix-web inside the same actor system.
//!
//! HTTP is up before anything else starts, so that a liveness probe sees the process alive
//! (`/healthz` 200) through a slow schema step or a broker that takes its time, while `/readyz`
//! says which start-up step is under way (503, `"status": "starting"`). `/healthz` fails (503)
//! once a loop of the pipeline has stopped turning for `http.liveness_timeout_secs`, or the
//! instance's lease was fenced: what only a restart cures. A dependency that is down fails
//! readiness, never liveness.

use std::net::SocketAddr;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::sync::watch;

use crate::cache::SnapshotInfo;
use crate::lease::Lease;
use crate::liveness::Liveness;
use crate::messages::{Health, WriterHealth};
use crate::metrics::Metrics;
use crate::sinks::kafka_writer::KafkaWriter;
use crate::sinks::pg_writer::PgWriter;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub snapshot: watch::Receiver<Option<SnapshotInfo>>,
    pub stage: watch::Receiver<Stage>,
    /// Readiness needs a valid lease; liveness, an unfenced one.
    pub lease: Lease,
    pub liveness: Liveness,
    /// A loop that has not turned for this long makes `/healthz` fail.
    pub liveness_timeout: Duration,
}

/// How far the start has come: what readiness can ask.
#[derive(Clone)]
pub enum Stage {
    /// A start-up step is under way (its name, for `/readyz`).
    Starting(&'static str),
    /// The writers run; their health is part of readiness.
    Running {
        kafka_writer: Addr<KafkaWriter>,
        pg_writer: Addr<PgWriter>,
    },
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    // Readiness as a series, for alerts: computed now, as /readyz would answer.
    readiness(&state).await;
    state.liveness.export(&state.metrics);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Why the process should be restarted, or `None` while it is alive: its lease was fenced (it
/// stops by itself, and must not be kept), or a loop of the pipeline has stopped turning.
pub fn not_alive_reason(state: &HttpState) -> Option<(&'static str, String)> {
    if state.lease.is_fenced() {
        return Some((
            "fenced",
            "this instance's lease was fenced: another instance took its work over".into(),
        ));
    }
    let stalled = state.liveness.stalled(state.liveness_timeout);
    if stalled.is_empty() {
        return None;
    }
    let loops: Vec<String> = stalled
        .iter()
        .map(|(l, age)| format!("{l} for {:.0} s", age.as_secs_f64()))
        .collect();
    Some(("wedged", format!("loops not turning: {}", loops.join(", "))))
}

async fn healthz(state: web::Data<HttpState>) -> HttpResponse {
    match not_alive_reason(&state) {
        None => HttpResponse::Ok().json(serde_json::json!({"status": "alive"})),
        Some((status, reason)) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": status, "reason": reason})),
    }
}

/// Why the service is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// A start-up step is under way.
    Starting(&'static str),
    /// Started, but a sink is not usable now.
    Unhealthy(String),
}

impl NotReady {
    /// `/readyz`'s `status`.
    fn status(&self) -> &'static str {
        match self {
            NotReady::Starting(_) => "starting",
            NotReady::Unhealthy(_) => "not ready",
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Starting(step) => write!(f, "starting: {step}"),
            NotReady::Unhealthy(reason) => f.write_str(reason),
        }
    }
}

/// Why the service is not ready (`None` when it is), also set as the `ready` gauge.
async fn readiness(state: &HttpState) -> Option<NotReady> {
    let reason = not_ready_reason(state).await;
    state.metrics.ready.set(i64::from(reason.is_none()));
    reason
}

/// Why the service is not ready, or `None` when it is.
pub async fn not_ready_reason(state: &HttpState) -> Option<NotReady> {
    let (kafka_writer, pg_writer) = match &*state.stage.borrow() {
        Stage::Starting(step) => return Some(NotReady::Starting(step)),
        Stage::Running {
            kafka_writer,
            pg_writer,
        } => (kafka_writer.clone(), pg_writer.clone()),
    };
    if state.snapshot.borrow().is_none() {
        return Some(NotReady::Starting("subscriber snapshot not loaded yet"));
    }
    if let Err(lapsed) = state.lease.check() {
        return Some(NotReady::Unhealthy(lapsed.to_string()));
    }
    // A writer that is reconnecting processes no messages, so no answer in time means not
    // connected.
    let timeout = Duration::from_secs(1);
    let kafka = tokio::time::timeout(timeout, kafka_writer.send(Health));
    let postgres = tokio::time::timeout(timeout, pg_writer.send(Health));
    for (sink, health) in [("kafka", kafka.await), ("postgres", postgres.await)] {
        match health {
            Ok(Ok(WriterHealth {
                fault: Some(reason),
                ..
            })) => {
                return Some(NotReady::Unhealthy(format!(
                    "{sink} sink refuses every write (a configuration fault; campaigns are held, \
                     none is committed): {reason}"
                )))
            }
            Ok(Ok(WriterHealth {
                connected: true,
                stalled: None,
                ..
            })) => {}
            Ok(Ok(WriterHealth {
                connected: true,
                stalled: Some((waited, rows)),
                ..
            })) => {
                return Some(NotReady::Unhealthy(format!(
                    "{sink} sink has had {rows} notifications waiting and confirmed none for {}s",
                    waited.as_secs()
                )))
            }
            _ => return Some(NotReady::Unhealthy(format!("{sink} sink not connected"))),
        }
    }
    None
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    match readiness(&state).await {
        None => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Some(why) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": why.status(), "reason": why.to_string()})),
    }
}

/// Binds `listen` and starts serving; returns the bound address and a handle to stop it.
pub fn start(
    listen: &str,
    state: HttpState,
) -> std::io::Result<(SocketAddr, actix_web::dev::ServerHandle)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    // Signals belong to the service, which drains before it stops the server.
    .disable_signals()
    .shutdown_timeout(1)
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no address bound"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::fatal::Fatal;
    use crate::liveness::Loop;

    /// With a liveness limit of 50 ms.
    fn state(lease: Lease, liveness: Liveness) -> HttpState {
        HttpState {
            metrics: Metrics::new(),
            snapshot: watch::channel(None).1,
            stage: watch::channel(Stage::Starting("testing")).1,
            lease,
            liveness,
            liveness_timeout: Duration::from_millis(50),
        }
    }

    #[test]
    fn healthz_fails_for_a_loop_that_stopped_turning_and_for_a_fenced_lease_only() {
        let liveness = Liveness::default();
        let (fatal, _failed) = Fatal::channel();
        let lease = Lease::pending(fatal);
        // Starting, the lease not even valid yet (Postgres slow, say): alive.
        assert_eq!(
            not_alive_reason(&state(lease.clone(), liveness.clone())),
            None
        );
        liveness.beat(Loop::Reader);
        std::thread::sleep(Duration::from_millis(80));
        liveness.beat_at(Loop::Ledger, Instant::now());
        let (status, reason) =
            not_alive_reason(&state(lease.clone(), liveness.clone())).expect("wedged");
        assert_eq!(status, "wedged");
        assert!(reason.contains("kafka_reader for 0 s"), "{reason}");
        assert!(!reason.contains("ledger"), "{reason}");
        liveness.beat(Loop::Reader);
        assert_eq!(
            not_alive_reason(&state(lease.clone(), liveness.clone())),
            None
        );
        lease.acquired(3);
        lease.fenced(Some(4));
        let (status, _) = not_alive_reason(&state(lease, liveness)).expect("fenced");
        assert_eq!(status, "fenced");
    }
}
