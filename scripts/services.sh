# Sourced by scripts/test.sh and scripts/bench.sh: the services they run against.
#
#   ensure_postgres           start the local Postgres cluster if it does not answer
#   ensure_tansu              install Tansu 0.6.0 with cargo when it is missing (once, ~10 min)
#   start_tansu DIR           start it on a free port with sqlite storage in DIR; sets
#                             tansu_pid and broker (127.0.0.1:PORT)
#   stop_tansu                stop it

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
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$tansu_pid" 2>/dev/null; then
      echo "tansu exited at start:" >&2
      cat "$dir/tansu.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tansu did not listen on $broker" >&2
  return 1
}

stop_tansu() {
  if [ -n "$tansu_pid" ] && kill -0 "$tansu_pid" 2>/dev/null; then
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
  fi
}
