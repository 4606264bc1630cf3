//! Starts the five actors in the right order and stops them in the right order.
//!
//! Start: schema -> writers -> enricher -> cache (first snapshot) -> reader, so that the reader
//! pulls nothing before there is somewhere to put it. Stop: the reader drains and commits, then
//! the writers flush and close. Shared by `run`, `demo` and the tests.

use std::net::SocketAddr;

use actix::prelude::*;
use tokio::sync::watch;

use crate::cache::{SnapshotInfo, SubscriberCache};
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryTargets};
use crate::enricher::Enricher;
use crate::kafka::ProducerSettings;
use crate::ledger::OutputTarget;
use crate::messages::{Close, Drain, DrainReport, RefreshCache};
use crate::metrics::Metrics;
use crate::reader::{KafkaReader, ReaderSettings};
use crate::sinks::dead_letter_writer::DeadLetterWriter;
use crate::sinks::kafka_writer::{KafkaSink, KafkaSinkSettings, KafkaWriter};
use crate::sinks::pg_writer::{PgSinkConfig, PgWriter};
use crate::sinks::{Writer, WriterSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare the Postgres schema: {0}")]
    Schema(String),
    #[error("cannot serve HTTP on {listen}: {source}")]
    Http {
        listen: String,
        source: std::io::Error,
    },
    #[error("the subscriber cache stopped before its first load")]
    CacheGone,
    #[error("cannot recover notifications left unsent by a stopped instance: {0}")]
    Recovery(String),
}

pub struct Pipeline {
    pub metrics: Metrics,
    pub http_addr: SocketAddr,
    pub snapshot: watch::Receiver<Option<SnapshotInfo>>,
    reader: Addr<KafkaReader>,
    cache: Addr<SubscriberCache>,
    kafka_writer: Addr<KafkaWriter>,
    pg_writer: Addr<PgWriter>,
    dead_letters: Option<Addr<DeadLetterWriter>>,
    http: actix_web::dev::ServerHandle,
    arbiters: Vec<Arbiter>,
    config: Config,
    fatal: watch::Receiver<Option<String>>,
}

impl Pipeline {
    /// Starts everything and returns once the first subscriber snapshot is loaded and the reader
    /// is consuming. Must run inside an actix `System`.
    pub async fn start(config: Config, metrics: Metrics) -> Result<Pipeline, StartError> {
        if config.postgres.create_schema {
            let mut client = crate::postgres::connect(&config.postgres.url, "schema")
                .await
                .map_err(|e| StartError::Schema(crate::postgres::describe(&e)))?;
            crate::postgres::ensure_schema(&mut client)
                .await
                .map_err(|e| StartError::Schema(e.to_string()))?;
        }

        // Finish what crashed processes left half-sent before reading anything new.
        let owner = crate::ledger::new_owner();
        let producer = ProducerSettings {
            brokers: config.kafka.brokers.clone(),
            message_timeout_ms: config.writers.kafka_message_timeout_ms,
            overrides: config
                .kafka
                .producer
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let output = OutputTarget {
            producer: producer.clone(),
            topic: config.kafka.output_topic.clone(),
        };
        let ledger_client = crate::postgres::connect(&config.postgres.url, "ledger")
            .await
            .map_err(|e| StartError::Recovery(crate::postgres::describe(&e)))?;
        let report = crate::ledger::recover(&ledger_client, &output, owner, 0.0)
            .await
            .map_err(StartError::Recovery)?;
        drop(ledger_client);
        if report.owners > 0 {
            log::info!(
                "ledger: recovered {} stopped instance(s): {} notifications re-sent, {} were already in Kafka",
                report.owners,
                report.resent,
                report.already_sent
            );
        }

        let (fatal_tx, fatal) = watch::channel(None);
        let settings = WriterSettings::from_config(&config.writers);
        let kafka_arbiter = Arbiter::new();
        let pg_arbiter = Arbiter::new();
        let cache_arbiter = Arbiter::new();

        let ledger_arbiter = Arbiter::new();
        let (url, k, m) = (config.postgres.url.clone(), output.clone(), metrics.clone());
        let takeover = std::time::Duration::from_secs(config.ledger.takeover_after_secs);
        let ledger = Supervisor::start_in_arbiter(&ledger_arbiter.handle(), move |_| {
            crate::ledger::Ledger::new(url, owner, k, takeover, m)
        });
        let (s, m, f) = (settings.clone(), metrics.clone(), fatal_tx.clone());
        let k = KafkaSinkSettings {
            producer: producer.clone(),
            topic: config.kafka.output_topic.clone(),
        };
        let kafka_writer = Supervisor::start_in_arbiter(&kafka_arbiter.handle(), move |_| {
            Writer::<KafkaSink>::new(k, s, m, f)
        });
        let pg_config = PgSinkConfig {
            url: config.postgres.url.clone(),
            owner,
        };
        let (s, m, f) = (settings, metrics.clone(), fatal_tx.clone());
        let pg_writer = Supervisor::start_in_arbiter(&pg_arbiter.handle(), move |_| {
            PgWriter::new(pg_config, s, m, f)
        });

        let dead_letters = if config.kafka.dead_letter_topic.is_empty() {
            None
        } else {
            let dlq_config = KafkaSinkSettings {
                producer: producer.clone(),
                topic: config.kafka.dead_letter_topic.clone(),
            };
            let (s, m, f) = (
                WriterSettings::from_config(&config.writers),
                metrics.clone(),
                fatal_tx.clone(),
            );
            Some(Supervisor::start_in_arbiter(
                &kafka_arbiter.handle(),
                move |_| DeadLetterWriter::new(dlq_config, s, m, f),
            ))
        };
        let delivery = Delivery::new(
            DeliveryTargets {
                postgres: pg_writer.clone().recipient(),
                kafka: kafka_writer.clone().recipient(),
                ledger: ledger.clone().recipient(),
                dead_letters: dead_letters.clone().map(Addr::recipient),
            },
            owner,
            Clock::system(),
            metrics.clone(),
        );
        let enricher = Enricher::new(
            delivery,
            config.enricher.max_campaign_bytes,
            Clock::system(),
            metrics.clone(),
        )
        .start();

        let (published, mut snapshot) = watch::channel(None);
        let (url, interval, m) = (
            config.postgres.url.clone(),
            config.refresh_interval(),
            metrics.clone(),
        );
        let subscribers = vec![enricher.clone().recipient()];
        let cache = Supervisor::start_in_arbiter(&cache_arbiter.handle(), move |_| {
            SubscriberCache::new(url, interval, subscribers, m, published)
        });

        let (http_addr, http) = crate::http::start(
            &config.http.listen,
            crate::http::HttpState {
                metrics: metrics.clone(),
                snapshot: snapshot.clone(),
                kafka_writer: kafka_writer.clone(),
                pg_writer: pg_writer.clone(),
            },
        )
        .map_err(|source| StartError::Http {
            listen: config.http.listen.clone(),
            source,
        })?;
        log::info!("serving /metrics, /healthz and /readyz on http://{http_addr}");

        snapshot
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StartError::CacheGone)?;

        let reader = KafkaReader::new(
            ReaderSettings::from_config(&config),
            enricher.clone().recipient(),
            metrics.clone(),
            fatal_tx,
        )
        .start();

        Ok(Pipeline {
            metrics,
            http_addr,
            snapshot,
            reader,
            cache,
            kafka_writer,
            pg_writer,
            dead_letters,
            http,
            arbiters: vec![kafka_arbiter, pg_arbiter, cache_arbiter, ledger_arbiter],
            config,
            fatal,
        })
    }

    /// Resolves with the reason when a part of the pipeline failed in a way no restart cures;
    /// the caller should shut down and exit non-zero.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        let reason = match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // Never happens while the reader exists; wait forever rather than report a failure.
            Err(_) => std::future::pending().await,
        };
        reason
    }

    /// Asks the cache to reload now.
    pub fn refresh_cache(&self) {
        self.cache.do_send(RefreshCache);
    }

    /// Stops reading, waits for campaigns in flight (up to the configured grace period), commits
    /// offsets, flushes and closes both writers.
    pub async fn shutdown(self) -> DrainReport {
        let grace = self.config.grace_period();
        let report = self.reader.send(Drain { grace }).await.unwrap_or_default();
        let dead_letters = self.dead_letters.clone();
        let close = futures::future::join3(
            self.kafka_writer.send(Close),
            self.pg_writer.send(Close),
            async move {
                if let Some(d) = dead_letters {
                    let _ = d.send(Close).await;
                }
            },
        );
        if tokio::time::timeout(grace, close).await.is_err() {
            log::warn!("writers did not close within {grace:?}");
        }
        self.http.stop(true).await;
        // Joining drops the writers' producers and connections before this returns, so nothing
        // of the pipeline outlives it.
        let arbiters = self.arbiters;
        let joined = tokio::task::spawn_blocking(move || {
            for arbiter in arbiters {
                arbiter.stop();
                let _ = arbiter.join();
            }
        });
        if tokio::time::timeout(grace, joined).await.is_err() {
            log::warn!("actor threads did not stop within {grace:?}");
        }
        report
    }
}
