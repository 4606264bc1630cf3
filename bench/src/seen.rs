//! When each notification first reached the output topic: a thread reads the topic from its end
//! and notes, per key (the client id), the moment it was first seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::setup::{err, BenchResult};

/// The reader; stopped when dropped.
pub struct SeenInKafka {
    /// Per key, when it was first seen.
    pub seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SeenInKafka {
    /// Reads `partitions` partitions of `topic` from their end (give it a moment to find the end
    /// before anything is produced).
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> BenchResult<SeenInKafka> {
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "cn-bench-seen-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(err("consumer"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::End)
                .map_err(err("assignment"))?;
        }
        consumer.assign(&assignment).map_err(err("assign"))?;
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
                    }
                }
            })
        };
        Ok(SeenInKafka {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// How many keys were seen.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SeenInKafka {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
