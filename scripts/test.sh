#!/usr/bin/env bash
# The whole test suite, with everything it needs.
#
# - installs the Kafka-protocol broker Tansu 0.6.0 when it is missing (about 10 minutes, once),
#   and noida-db from PyPI, a broker whose Kafka transactions work, for tests/it/transactions.rs;
# - installs the benchmark's plain Python baseline's packages in a virtual environment of their
#   own when they are missing (seconds, once), for the matrix smoke run;
# - makes sure the local Postgres is up;
# - checks the deploy files with their own tools (scripts/check-files.sh);
# - starts Tansu on a free port with sqlite storage in a directory of this run, and noida-db
#   beside it, so runs never share a broker;
# - runs `cargo test --workspace` with the integration suite (every test makes its own database
#   and topics);
# - stops the broker and drops any database a failed test left behind.
#
# Environment: TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the
# server the tests create their databases on. Extra arguments go to `cargo test`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/services.sh
. "$root/scripts/services.sh"
pg_url=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

log() { printf '== %s\n' "$*" >&2; }

ensure_tansu
ensure_noida
ensure_postgres
ensure_baseline_python
"$root/scripts/ensure-test-tools.sh"

run_id="$(date +%s)_$$"
run_dir="$root/.test-run/$run_id"

cleanup() {
  local status=$?
  stop_tansu
  stop_noida
  # Databases of this run that a failed test left behind: dropped after a green run, kept for
  # a look after a red one.
  leftovers=$(psql "$pg_url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'cn_test_${run_id}_%'" 2>/dev/null || true)
  if [ "$status" -eq 0 ]; then
    for db in $leftovers; do
      psql "$pg_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$run_dir"
  else
    log "kept $run_dir (broker log: $run_dir/tansu/tansu.log)"
    for db in $leftovers; do log "kept database $db"; done
  fi
  exit "$status"
}
trap cleanup EXIT

start_tansu "$run_dir/tansu"
log "tansu on $broker"
start_noida "$run_dir/noida"
log "noida-db (Kafka transactions) on $txn_broker"

log "deploy files checked by their own tools"
"$root/scripts/check-files.sh"

export CN_TEST_BROKERS="$broker"
export CN_TEST_TXN_BROKERS="$txn_broker"
export CN_TEST_POSTGRES_URL="$pg_url"
export CN_TEST_RUN_ID="$run_id"
export CN_TEST_TANSU_DIR="$run_dir/tansu"
export CN_TEST_TANSU_PID="$tansu_pid"

# The benchmark once, small, as a smoke test: figures printed, nothing asserted on time. Before
# the tests, so that the test runner's summary stays the last thing printed.
log "benchmark smoke run"
cargo run -q -p campaign-bench -- --brokers "$broker" --postgres-url "$pg_url" \
  --restaurants 100 --pairs 5000 --campaigns 100 --latency-secs 2 --latency-fanout 10 \
  --backlog-campaigns 20 --cache-pairs 20000
log "fan-out matrix smoke run (two shapes, beside the plain Python baseline)"
cargo run -q -p campaign-bench -- --brokers "$broker" --postgres-url "$pg_url" \
  --matrix 10,zipf --notifications 5000 --restaurants 100 --latency-secs 2 \
  --baseline-python "$baseline_python" --chart "$run_dir/fanout.svg"
log "lifecycle benchmark smoke run"
cargo run -q -p campaign-bench --example lifecycle -- --brokers "$broker" --postgres-url "$pg_url" \
  --held 2000 --peak 50 --fanout 10 --lead-secs 8 --feed-rate 100 --feed-secs 2 --on-record 2000

# The unit tests of every crate and the integration suite (tests/it, behind the feature);
# --no-fail-fast: one red test binary must not hide the results of the others.
log "cargo test --workspace --features campaign-notifier/integration --no-fail-fast $*"
cargo test --workspace --features campaign-notifier/integration --no-fail-fast "$@"
