#!/usr/bin/env bash
# The benchmark against a Tansu broker of its own and the local Postgres; prints one JSON line.
# Arguments go to campaign-bench (see `cargo run -p campaign-bench -- --help`), e.g.
#   scripts/bench.sh --pairs 1000000 --restaurants 5000 --campaigns 5000
# or the fan-out matrix (fan-out 1, 10, 100, 1 000 and the Zipf mix; one JSON line per shape):
#   scripts/bench.sh --matrix
# With --baseline anywhere, the plain Python pipeline of bench/baseline/pipeline.py runs on the
# same workload beside the service (its packages installed once in a virtual environment):
#   scripts/bench.sh --matrix --baseline --chart docs/fanout.svg
# or, with `--example NAME` first, to one of bench/examples instead:
#   scripts/bench.sh --example producer_chunking
# The example `changes` gets a Postgres cluster of its own with wal_level = logical (started in the
# run's temporary directory, stopped at the end) instead of the local one:
#   scripts/bench.sh --example changes --pairs 50000000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/services.sh
. "$root/scripts/services.sh"

ensure_tansu
ensure_postgres
dir=$(mktemp -d)
trap 'stop_tansu; stop_logical_postgres; rm -rf "$dir"' EXIT
start_tansu "$dir"
args=()
for a in "$@"; do
  if [ "$a" = "--baseline" ]; then
    ensure_baseline_python
    args+=(--baseline-python "$baseline_python")
  else
    args+=("$a")
  fi
done
set -- ${args[@]+"${args[@]}"}
if [ "${1:-}" = "--example" ]; then
  example=$2
  shift 2
  cargo build -q --release -p campaign-bench --example "$example"
  if [ "$example" = changes ]; then
    # The postgres user must reach its data directory inside the run's.
    chmod a+x "$dir"
    start_logical_postgres "$dir/postgres"
    set -- --postgres-url "$logical_pg_url" "$@"
  fi
  "./target/release/examples/$example" --brokers "$broker" "$@"
else
  cargo build -q --release -p campaign-bench
  ./target/release/campaign-bench --brokers "$broker" "$@"
fi
