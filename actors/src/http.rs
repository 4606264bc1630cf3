//! `/metrics`, `/healthz` and `/readyz`, served by actix-web inside the same actor system.
//!
//! HTTP is up before anything else starts, so that a liveness probe sees the process alive
//! (`/healthz` 200) through a slow schema step or a broker that takes its time, while `/readyz`
//! says which start-up step is under way (503, `"status": "starting"`).

use std::net::SocketAddr;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::sync::watch;

use crate::cache::SnapshotInfo;
use crate::messages::{Health, WriterHealth};
use crate::metrics::Metrics;
use crate::sinks::kafka_writer::KafkaWriter;
use crate::sinks::pg_writer::PgWriter;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub snapshot: watch::Receiver<Option<SnapshotInfo>>,
    pub stage: watch::Receiver<Stage>,
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
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
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
