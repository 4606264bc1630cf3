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
# With --pin-broker anywhere, the broker gets the first core to itself and everything else (the
# benchmark's process, the service in it, a Postgres cluster the run starts) the others: the broker
# as on a machine of its own, which on this two-core machine sets the pipeline's rate otherwise
# shared with whatever else runs. The local Postgres server, not the run's, is left as it is.
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
pin=()
for a in "$@"; do
  if [ "$a" = "--pin-broker" ]; then
    cores=$(nproc)
    if [ "$cores" -lt 2 ]; then
      echo "--pin-broker needs two cores or more; this machine has $cores" >&2
      exit 2
    fi
    # Every thread of the broker now; those it starts later inherit it.
    taskset -a -p -c 0 "$tansu_pid" >/dev/null
    pin=(taskset -c "1-$((cores - 1))")
    echo "broker pinned to core 0, the rest to cores 1-$((cores - 1))" >&2
  elif [ "$a" = "--baseline" ]; then
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
    if [ ${#pin[@]} -gt 0 ]; then
      # The postmaster and what runs already; the backends it forks later inherit it.
      postmaster=$(head -n1 "$dir/postgres/data/postmaster.pid")
      for p in "$postmaster" $(pgrep -P "$postmaster"); do
        taskset -a -p -c "${pin[2]}" "$p" >/dev/null
      done
    fi
    set -- --postgres-url "$logical_pg_url" "$@"
  fi
  ${pin[@]+"${pin[@]}"} "./target/release/examples/$example" --brokers "$broker" "$@"
else
  cargo build -q --release -p campaign-bench
  ${pin[@]+"${pin[@]}"} ./target/release/campaign-bench --brokers "$broker" "$@"
fi
