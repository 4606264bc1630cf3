# syntax=docker/dockerfile:1
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

# The whole workspace (.dockerignore leaves out only build output, VCS data and test runs), so
# a member added later is built without touching this file. Dependencies and librdkafka are
# cached between builds by BuildKit's cache mounts, not by a stage of stub sources.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin campaign-notifier \
    && cp target/release/campaign-notifier /usr/local/bin/campaign-notifier

FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="campaign-notifier" \
      org.opencontainers.image.description="Turns restaurant promo campaigns from Kafka into per-subscriber notification drafts in Kafka and Postgres" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

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
