//! A throwaway Kafka-protocol broker for trying the service by hand: librdkafka's mock cluster
//! with the given topics, serving until Ctrl-C. Nothing is persisted.
//!
//! ```sh
//! cargo run --example mock_broker -- campaigns notifications
//! ```

use std::time::Duration;

use rdkafka::mocking::MockCluster;

fn main() {
    let topics: Vec<String> = std::env::args().skip(1).collect();
    let cluster = match MockCluster::new(1) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the mock cluster: {e}");
            std::process::exit(1);
        }
    };
    for topic in &topics {
        if let Err(e) = cluster.create_topic(topic, 1, 1) {
            eprintln!("cannot create topic {topic}: {e}");
            std::process::exit(1);
        }
    }
    println!("{}", cluster.bootstrap_servers());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
