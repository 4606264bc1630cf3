# Sourced by scripts/test.sh and scripts/bench.sh: the services they run against.
#
#   ensure_postgres           start the local Postgres cluster if it does not answer
#   ensure_tansu              install Tansu 0.6.0 with cargo when it is missing (once, ~10 min)
#   start_tansu DIR           start it on a free port with sqlite storage in DIR; sets
#                             tansu_pid and broker (127.0.0.1:PORT)
#   stop_tansu                stop it
#   ensure_noida              install the noida-db broker from PyPI when it is missing (seconds)
#   start_noida DIR           start its Kafka service (which has Kafka transactions, as Tansu 0.6.0
#                             has not) on a free port with its data in DIR; sets noida_pid and
#                             txn_broker (127.0.0.1:PORT)
#   stop_noida                stop it
#   start_logical_postgres DIR  a Postgres cluster of its own in DIR with wal_level = logical (the
#                             local one has replica and is left as it is) on a free port; sets
#                             logical_pg_url (postgres://postgres@127.0.0.1:PORT/postgres)
#   stop_logical_postgres     stop it
#   ensure_baseline_python    a virtual environment with confluent-kafka and psycopg for the
#                             benchmark's plain Python pipeline (seconds, once); sets
#                             baseline_python to its interpreter

TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"

ensure_tansu() {
  if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  printf '== installing tansu %s (once; takes about 10 minutes)\n' "$TANSU_VERSION" >&2
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql,postgres
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return
  fi
  printf '== starting the local Postgres\n' >&2
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

tansu_pid=""
broker=""

start_tansu() {
  local dir=$1 port
  mkdir -p "$dir"
  port=$(free_port)
  broker="127.0.0.1:$port"
  (
    cd "$dir"
    exec tansu broker \
      --listener-url "tcp://$broker" \
      --advertised-listener-url "tcp://$broker" \
      --storage-engine "sqlite://broker.db"
  ) >"$dir/tansu.log" 2>&1 &
  tansu_pid=$!
  wait_listening "$port" "$tansu_pid" "$dir/tansu.log" tansu
}

# wait_listening PORT PID LOG NAME: until PORT accepts connections; fails if PID exits first
# (printing LOG) or after 10 s.
wait_listening() {
  local port=$1 pid=$2 log=$3 name=$4
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited at start:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name did not listen on 127.0.0.1:$port" >&2
  return 1
}

stop_tansu() {
  if [ -n "$tansu_pid" ] && kill -0 "$tansu_pid" 2>/dev/null; then
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
  fi
}

# A cluster for logical decoding: the newest server version installed, initdb'd into DIR/data (as
# the postgres user when run as root: initdb refuses root), without fsync: it is thrown away after
# the run.
logical_pg_dir=""
logical_pg_url=""

postgres_bin() {
  echo "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n1)/bin/$1"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_logical_postgres() {
  local dir=$1 port
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  port=$(free_port)
  if ! as_postgres "$(postgres_bin initdb)" -D "$dir/data" -A trust -U postgres --no-sync \
    >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    return 1
  fi
  cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
CONF
  logical_pg_dir=$dir
  if ! as_postgres "$(postgres_bin pg_ctl)" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
    >/dev/null; then
    cat "$dir/postgres.log" >&2
    return 1
  fi
  logical_pg_url="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_logical_postgres() {
  if [ -n "$logical_pg_dir" ] && [ -f "$logical_pg_dir/data/postmaster.pid" ]; then
    as_postgres "$(postgres_bin pg_ctl)" -D "$logical_pg_dir/data" -m fast -w stop >/dev/null 2>&1 ||
      true
  fi
}

# noida-db: a Kafka-protocol broker whose transactions commit, abort and fence (Tansu 0.6.0 has no
# EndTxn; nisshi 0.8 refuses transactional ids; 0.7 shows aborted records to read_committed
# readers). Used by tests/it/transactions.rs only.
NOIDA_VERSION=0.2.3
noida_home=${NOIDA_HOME:-$HOME/.cache/campaign-notifier/noida-db-$NOIDA_VERSION}
noida_bin="$noida_home/noida_db/noida-db"
noida_pid=""
txn_broker=""

ensure_noida() {
  if [ -x "$noida_bin" ]; then
    return
  fi
  printf '== installing noida-db %s from PyPI\n' "$NOIDA_VERSION" >&2
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$noida_home" \
    "noida-db==$NOIDA_VERSION"
}

start_noida() {
  local dir=$1 port
  mkdir -p "$dir/data"
  port=$(free_port)
  txn_broker="127.0.0.1:$port"
  "$noida_bin" start --data-dir "$dir/data" --host 127.0.0.1 --only kafka --kafka-port "$port" \
    >"$dir/noida.log" 2>&1 &
  noida_pid=$!
  wait_listening "$port" "$noida_pid" "$dir/noida.log" noida-db
}

stop_noida() {
  if [ -n "$noida_pid" ] && kill -0 "$noida_pid" 2>/dev/null; then
    kill -INT "$noida_pid" 2>/dev/null || true
    wait "$noida_pid" 2>/dev/null || true
  fi
}

# The benchmark's baseline (bench/baseline/pipeline.py): its own virtual environment, pinned.
BASELINE_REQUIREMENTS="confluent-kafka==2.16.1 psycopg[binary]==3.3.9"
baseline_home=${BASELINE_HOME:-$HOME/.cache/campaign-notifier/baseline-venv-2.16.1-3.3.9}
baseline_python="$baseline_home/bin/python"

ensure_baseline_python() {
  if [ -x "$baseline_python" ] && "$baseline_python" -c 'import confluent_kafka, psycopg' 2>/dev/null; then
    return
  fi
  printf '== installing the baseline pipeline'"'"'s packages (%s)\n' "$BASELINE_REQUIREMENTS" >&2
  rm -rf "$baseline_home"
  python3 -m venv "$baseline_home"
  # shellcheck disable=SC2086
  "$baseline_home/bin/pip" install -q --disable-pip-version-check $BASELINE_REQUIREMENTS
}
