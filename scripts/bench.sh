#!/usr/bin/env bash
# The benchmark against a Tansu broker of its own and the local Postgres; prints one JSON line.
# Arguments go to campaign-bench (see `cargo run -p campaign-bench -- --help`), e.g.
#   scripts/bench.sh --pairs 1000000 --restaurants 5000 --campaigns 5000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/services.sh
. "$root/scripts/services.sh"

ensure_tansu
ensure_postgres
dir=$(mktemp -d)
trap 'stop_tansu; rm -rf "$dir"' EXIT
start_tansu "$dir"
cargo build -q --release -p campaign-bench
./target/release/campaign-bench --brokers "$broker" "$@"
