#!/usr/bin/env bash
# The whole test suite, with everything it needs.
#
# - installs the Kafka-protocol broker Tansu 0.6.0 when it is missing (about 10 minutes, once);
# - makes sure the local Postgres is up;
# - starts Tansu on a free port with sqlite storage in a directory of this run, so runs never
#   share a broker;
# - runs `cargo test --workspace` (every test makes its own database and topics);
# - stops the broker and drops any database a failed test left behind.
#
# Environment: TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the
# server the tests create their databases on. Extra arguments go to `cargo test`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

TANSU_VERSION=0.6.0
pg_url=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

log() { printf '== %s\n' "$*" >&2; }

ensure_tansu() {
  if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "installing tansu $TANSU_VERSION (once; takes about 10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql,postgres
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return
  fi
  log "starting the local Postgres"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return
    sleep 0.5
  done
  echo "Postgres is not reachable on 127.0.0.1:5432" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ensure_tansu
ensure_postgres
"$root/scripts/ensure-test-tools.sh"

run_id="$(date +%s)_$$"
run_dir="$root/.test-run/$run_id"
mkdir -p "$run_dir/tansu"
port=$(free_port)
broker="127.0.0.1:$port"

tansu_pid=""
cleanup() {
  local status=$?
  if [ -n "$tansu_pid" ] && kill -0 "$tansu_pid" 2>/dev/null; then
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
  fi
  # Databases of this run that a failed test left behind: dropped after a green run, kept for
  # a look after a red one.
  leftovers=$(psql "$pg_url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'cn_test_${run_id}_%'" 2>/dev/null || true)
  if [ "$status" -eq 0 ]; then
    for db in $leftovers; do
      psql "$pg_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$run_dir"
  else
    log "kept $run_dir (broker log: $run_dir/tansu.log)"
    for db in $leftovers; do log "kept database $db"; done
  fi
  exit "$status"
}
trap cleanup EXIT

log "starting tansu on $broker"
(
  cd "$run_dir/tansu"
  exec tansu broker \
    --listener-url "tcp://$broker" \
    --advertised-listener-url "tcp://$broker" \
    --storage-engine "sqlite://broker.db"
) >"$run_dir/tansu.log" 2>&1 &
tansu_pid=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  if ! kill -0 "$tansu_pid" 2>/dev/null; then
    echo "tansu exited at start:" >&2
    cat "$run_dir/tansu.log" >&2
    exit 1
  fi
  sleep 0.1
done

export CN_TEST_BROKERS="$broker"
export CN_TEST_POSTGRES_URL="$pg_url"
export CN_TEST_RUN_ID="$run_id"
export CN_TEST_TANSU_DIR="$run_dir/tansu"
export CN_TEST_TANSU_PID="$tansu_pid"

# --no-fail-fast: one red test binary must not hide the results of the others.
log "cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@"
