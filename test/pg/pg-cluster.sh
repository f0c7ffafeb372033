#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests: initdb in a temp dir, listening on a free loopback
# port only, password auth over TCP (so tests see a URL with a password to keep out of output).
#
#   pg-cluster.sh start [DIR]   create and start a cluster (in DIR, default a new temp dir);
#                               prints `export BACKY_TEST_PG_URL=...` and `export BACKY_TEST_PG_DIR=...`
#   pg-cluster.sh stop [DIR]    stop it (fast) and delete DIR        (DIR default: $BACKY_TEST_PG_DIR)
#   pg-cluster.sh kill [DIR]    stop it at once (-m immediate, like a crash), keep DIR
#   pg-cluster.sh restart [DIR] start a stopped cluster again on the same port
#
# initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user.
# Developers: `eval "$(npm run -s pg:start)"`, then `npm test`, then `npm run pg:stop`.
set -euo pipefail

bindir() {
  if [ -n "${BACKY_PG_BINDIR:-}" ]; then echo "$BACKY_PG_BINDIR"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
  echo "pg-cluster: PostgreSQL server binaries not found; install them (Debian: apt-get install postgresql)" >&2
  exit 3
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

cmd=${1:-}
dir=${2:-${BACKY_TEST_PG_DIR:-}}
bin=$(bindir)

case "$cmd" in
  start)
    # Never $BACKY_TEST_PG_DIR: that is a running cluster; a new one gets a new directory.
    dir=${2:-}
    if [ -z "$dir" ]; then
      dir=$(mktemp -d "${TMPDIR:-/tmp}/backy-pg-XXXXXX")
      trap 'rm -rf "$dir"' ERR # a failed start leaves nothing behind
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$password" >"$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
    chmod 600 "$dir/pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; false; }
    rm -f "$dir/pwfile"
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir'"
      # Faster throwaway clusters: no fsync (an OS crash is not what tests simulate). Commits
      # still reach the OS before they return, so a server crash (kill) loses nothing.
      echo "fsync = off"
      echo "full_page_writes = off"
      echo "max_connections = 200"
    } >>"$dir/data/postgresql.conf"
    # The free port may be taken before the server binds it: then try another (the last
    # `port =` line wins).
    for attempt in 1 2 3; do
      port=$(free_port)
      echo "port = $port" >>"$dir/data/postgresql.conf"
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null; then break; fi
      [ "$attempt" -lt 3 ] || { cat "$dir/server.log" >&2; false; }
    done
    trap - ERR
    echo "export BACKY_TEST_PG_URL=postgresql://postgres:$password@127.0.0.1:$port/postgres"
    echo "export BACKY_TEST_PG_DIR=$dir"
    ;;
  stop)
    [ -n "$dir" ] || { echo "pg-cluster: stop: no DIR and no \$BACKY_TEST_PG_DIR" >&2; exit 2; }
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  kill)
    [ -n "$dir" ] || { echo "pg-cluster: kill: no DIR" >&2; exit 2; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  restart)
    [ -n "$dir" ] || { echo "pg-cluster: restart: no DIR" >&2; exit 2; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
      { cat "$dir/server.log" >&2; exit 1; }
    ;;
  *)
    echo "usage: pg-cluster.sh start|stop|kill|restart [DIR]" >&2
    exit 2
    ;;
esac
