"""The plain pipeline a data engineer would write in an afternoon, as the benchmark's baseline.

Consume up to 500 campaigns, `json.loads` each, join with a dict of the subscribers loaded once
at start, keep the active ones, produce one notification per subscriber (linger.ms 20, lz4),
`COPY` the batch into the feedback table, flush the producer, commit the offsets. At least once:
no lifecycle, no deduplication, no dead letters (a message it cannot use is skipped).

Run by `campaign-bench --baseline-python`, which reads this process's CPU from /proc: the script
prints `ready` once its dict is loaded and its partitions are assigned, `done N` once N
notifications are in both sinks (N >= --expect), and then waits for its standard input to close.
"""

import argparse
import json
import sys
import time

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer

COLUMNS = (
    "restaurant_id",
    "adv_campaign_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
    "datetime_created",
    "client_id",
    "trigger_datetime_created",
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--postgres", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--expect", type=int, required=True)
    a = p.parse_args()

    db = psycopg.connect(a.postgres)
    subscribers = {}
    with db.cursor() as cur:
        cur.execute("SELECT restaurant_id, client_id FROM subscribers_restaurants")
        for restaurant, client in cur:
            subscribers.setdefault(restaurant, []).append(client)
    db.commit()

    assigned = []
    consumer = Consumer(
        {
            "bootstrap.servers": a.brokers,
            "group.id": a.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([a.input], on_assign=lambda c, ps: assigned.extend(ps))
    producer = Producer(
        {"bootstrap.servers": a.brokers, "linger.ms": 20, "compression.type": "lz4"}
    )
    while not assigned:
        consumer.poll(0.1)
    print("ready", flush=True)

    copy = f"COPY {a.table} ({', '.join(COLUMNS)}) FROM STDIN"
    written = 0
    while written < a.expect:
        messages = consumer.consume(500, timeout=0.1)
        if not messages:
            continue
        now = int(time.time())
        rows = []
        for m in messages:
            if m.error():
                raise KafkaException(m.error())
            try:
                c = json.loads(m.value())
                restaurant = c["restaurant_id"]
                start = c["adv_campaign_datetime_start"]
                end = c["adv_campaign_datetime_end"]
            except (ValueError, KeyError, TypeError):
                continue
            if not start <= now <= end:
                continue
            for client in subscribers.get(restaurant, ()):
                out = dict(c, client_id=client, trigger_datetime_created=now)
                value = json.dumps(out)
                while True:
                    try:
                        producer.produce(a.output, value, key=client)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.05)
                rows.append(tuple(out.get(k) for k in COLUMNS))
            producer.poll(0)
        if rows:
            with db.cursor() as cur, cur.copy(copy) as cp:
                for row in rows:
                    cp.write_row(row)
            db.commit()
        producer.flush()
        consumer.commit(asynchronous=False)
        written += len(rows)

    print(f"done {written}", flush=True)
    sys.stdin.read()
    consumer.close()


if __name__ == "__main__":
    main()
