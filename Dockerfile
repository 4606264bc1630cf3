# campaign-notifier: build the release binary, then run it in a small image as a non-root user.
#
#   docker build -t campaign-notifier .
#   docker run --rm -p 9898:9898 \
#     -e CAMPAIGN_NOTIFIER__KAFKA__BROKERS=kafka:9092 \
#     -e CAMPAIGN_NOTIFIER__POSTGRES__URL=postgres://app:secret@db:5432/app \
#     campaign-notifier
#
# docker-compose.yml at the top of the repository runs it with Kafka, Postgres, Prometheus and
# Grafana.

FROM rust:1-bookworm AS builder

# rdkafka-sys builds librdkafka from source (its own configure script, or cmake), linking zlib
# and the system's OpenSSL (TLS, SASL SCRAM); zstd is built from source by zstd-sys.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential python3 cmake zlib1g-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, against stub sources, so that a change to the service's code does not
# rebuild librdkafka and the rest of the dependency tree.
# Every workspace member's manifest is needed for cargo to load the workspace, and each member
# needs a target (the benchmark's is a stub here and is never built into the image).
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/
COPY bench/Cargo.toml bench/
RUN mkdir -p src actors/src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch actors/src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked --bin campaign-notifier \
    && rm -rf src actors/src bench/src

COPY . .
# The copied sources may be older than the stub build's outputs: make cargo see them as changed.
RUN touch src/main.rs actors/src/lib.rs \
    && cargo build --release --locked --bin campaign-notifier \
    && cp target/release/campaign-notifier /usr/local/bin/campaign-notifier


FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 campaign-notifier \
    && useradd --system --uid 10001 --gid campaign-notifier --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin campaign-notifier

COPY --from=builder /usr/local/bin/campaign-notifier /usr/local/bin/campaign-notifier
COPY config.toml /etc/campaign-notifier/config.toml

USER campaign-notifier:campaign-notifier

# /metrics, /healthz and /readyz (http.listen in config.toml).
EXPOSE 9898

# Ready once the subscriber snapshot is loaded and both sinks are connected. The image has no
# curl: bash's /dev/tcp sends the request and the status line is compared. docker-compose.yml
# uses the same command.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9898 && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]

ENTRYPOINT ["campaign-notifier"]
CMD ["run", "--config", "/etc/campaign-notifier/config.toml"]
