//! Why the Kafka writer hands librdkafka one acknowledged chunk per partition at a time.
//!
//! Sends the same messages twice with the service's producer settings, each time to a fresh topic:
//! first all handed to librdkafka at once, then chunk by chunk per partition as the Kafka writer
//! does (partition chosen with `partition_for`, at most `CHUNK_MESSAGES` / `CHUNK_BYTES` per chunk,
//! the next chunk of a partition after the previous one is acknowledged). Prints one JSON line per
//! way: messages per second and this process's CPU seconds per million messages.
//!
//! `scripts/bench.sh --example producer_chunking` runs it against a broker of its own.

use std::time::{Duration, Instant};

use campaign_actors::kafka::{partition_for, ProducerSettings};
use campaign_actors::sinks::kafka_writer::{CHUNK_BYTES, CHUNK_MESSAGES};
use campaign_bench::measure::cpu_seconds;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Payload bytes per message (a notification is about 420).
    #[arg(long, default_value_t = 420)]
    payload_bytes: usize,
}

fn key(i: usize) -> String {
    format!("20000000-0000-4000-8000-{i:012}")
}

/// Hands librdkafka a message, waiting while its queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    partition: Option<i32>,
) -> DeliveryFuture {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    record.partition = partition;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
}

async fn delivered(deliveries: Vec<DeliveryFuture>) {
    for d in deliveries {
        d.await.expect("delivery").expect("delivered");
    }
}

async fn at_once(producer: &FutureProducer, topic: &str, args: &Args, payload: &[u8]) {
    let mut deliveries = Vec::with_capacity(args.messages);
    for i in 0..args.messages {
        deliveries.push(send(producer, topic, &key(i), payload, None).await);
    }
    delivered(deliveries).await;
}

async fn chunked(producer: &FutureProducer, topic: &str, args: &Args, payload: &[u8]) {
    let mut by_partition = vec![Vec::new(); args.partitions as usize];
    for i in 0..args.messages {
        by_partition[partition_for(key(i).as_bytes(), args.partitions) as usize].push(i);
    }
    let per_chunk = CHUNK_MESSAGES
        .min(CHUNK_BYTES / (payload.len() + 36))
        .max(1);
    let partitions = by_partition.iter().enumerate().map(|(p, keys)| async move {
        for chunk in keys.chunks(per_chunk) {
            let mut deliveries = Vec::with_capacity(chunk.len());
            for &i in chunk {
                deliveries.push(send(producer, topic, &key(i), payload, Some(p as i32)).await);
            }
            delivered(deliveries).await;
        }
    });
    futures::future::join_all(partitions).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .expect("admin client");
    let payload = vec![b'x'; args.payload_bytes];
    for way in ["at_once", "chunked"] {
        let topic = format!("producer-chunking-{}-{way}", std::process::id());
        admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    args.partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await
            .expect("create topic")
            .into_iter()
            .for_each(|r| {
                r.expect("topic created");
            });
        let config = ProducerSettings {
            brokers: args.brokers.clone(),
            message_timeout_ms: 60_000,
            overrides: Vec::new(),
        };
        let producer: FutureProducer = config.client_config().create().expect("producer");
        let cpu = cpu_seconds();
        let started = Instant::now();
        match way {
            "at_once" => at_once(&producer, &topic, &args, &payload).await,
            _ => chunked(&producer, &topic, &args, &payload).await,
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        println!(
            "{}",
            serde_json::json!({
                "way": way,
                "messages": args.messages,
                "partitions": args.partitions,
                "per_s": (args.messages as f64 / secs).round(),
                "cpu_seconds_per_million": ((cpu / args.messages as f64 * 1e6) * 100.0).round() / 100.0,
            })
        );
    }
}
