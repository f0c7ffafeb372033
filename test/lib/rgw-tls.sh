#!/usr/bin/env bash
# rgw-tls.sh — an HTTPS S3 gateway for tests: a second radosgw on a mini-ceph.sh cluster that
# already has its plain-HTTP gateway (MINI_CEPH_RGW=1), serving the same zone, users and
# buckets through beast's own TLS (ssl_endpoint, ssl_certificate, ssl_private_key). mini-ceph.sh
# starts its gateway with a fixed plain-HTTP frontend, hence a process of our own. Its
# certificate is signed by a throwaway CA made here with openssl, for 127.0.0.1 and localhost.
#
# Usage:
#   rgw-tls.sh start CLUSTER_DIR OUT_DIR   start it (OUT_DIR: new or empty, or one it used
#                                          before: same CA and port if free); prints
#                                          export BACKY_TEST_S3_TLS_ENDPOINT='https://127.0.0.1:PORT'
#                                          export BACKY_TEST_S3_CA_FILE='OUT_DIR/ca.pem'
#   rgw-tls.sh stop OUT_DIR                stop it (TERM, then KILL after 30 s); keeps OUT_DIR
#   rgw-tls.sh pid OUT_DIR                 its process id (fault tests stop and kill it)
#
# It runs as the cluster's client.admin (its keyring is in the cluster's ceph.conf), so it adds
# nothing to the cluster itself; pid file, admin socket and log are in OUT_DIR.
set -euo pipefail

PROG=${0##*/}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# the gateway answers HTTPS on $1 with a certificate that the CA in $2 vouches for
https_answers() {
    python3 - "$1" "$2" <<'PY' >/dev/null 2>&1
import ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
try:
    urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/", context=ctx, timeout=5).read()
except urllib.error.HTTPError:
    pass  # an S3 error answer is an answer
PY
}

live_pid() { # the pid in OUT_DIR/radosgw.pid if that process is our radosgw
    local out=$1 pid
    [ -s "$out/radosgw.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$out/radosgw.pid")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$out/radosgw.pid"; then echo "$pid"; fi
}

make_certs() {
    local out=$1
    [ -s "$out/ca.pem" ] && [ -s "$out/server.pem" ] && return 0
    (
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=backy test CA' \
            -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' \
            -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
            >"$out/server.ext"
        openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
            -CAcreateserial -days 30 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
    ) || die "openssl could not make the test certificates"
    chmod 644 "$out/ca.pem"
}

cmd_start() {
    local cluster=${1:-} out=${2:-} port pid end auth_opts=()
    [ -n "$cluster" ] && [ -f "$cluster/ceph.conf" ] || die "give a mini-ceph.sh cluster directory"
    [ -n "$out" ] || die "give an output directory"
    mkdir -p "$out"
    cluster=$(cd "$cluster" && pwd -P)
    out=$(cd "$out" && pwd -P)
    command -v openssl >/dev/null || die "openssl is not installed"
    make_certs "$out"
    port=$(cat "$out/port" 2>/dev/null || true)
    if [ -z "$(live_pid "$out")" ]; then
        if [ -z "$port" ] || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port=$(free_port); fi
        echo "$port" >"$out/port"
        mkdir -p "$out/data"
        # radosgw alone defaults to a secure mon session, which needs cephx
        grep -qE '^auth client required = none' "$cluster/ceph.conf" && auth_opts=(--ms-mon-client-mode crc)
        # it forks into the background once it has its config from the mon
        timeout 120 radosgw -c "$cluster/ceph.conf" -n client.admin "${auth_opts[@]}" \
            --rgw-frontends "beast ssl_endpoint=127.0.0.1:$port ssl_certificate=$out/server.pem ssl_private_key=$out/server.key tcp_nodelay=1" \
            --pid-file "$out/radosgw.pid" --admin-socket "$out/radosgw.asok" --log-file "$out/radosgw.log" \
            --rgw-data "$out/data" --rgw-thread-pool-size 32 --rgw-enable-lc-threads false \
            >>"$out/stderr.log" 2>&1 || die "radosgw failed to start; see $out/radosgw.log"
    fi
    # ready once it answers HTTPS with a certificate the CA vouches for; its pid file appears
    # just after the fork, so a missing one is believed only after a few seconds
    local start; start=$(date +%s)
    end=$(( start + 120 ))
    until https_answers "$port" "$out/ca.pem"; do
        pid=$(live_pid "$out")
        if [ -z "$pid" ] && [ "$(date +%s)" -ge $(( start + 10 )) ]; then
            die "radosgw exited during startup; see $out/radosgw.log"
        fi
        [ "$(date +%s)" -lt "$end" ] || die "radosgw did not answer HTTPS on port $port within 120 s"
        sleep 0.3
    done
    log "HTTPS S3 gateway up on https://127.0.0.1:$port"
    printf "export BACKY_TEST_S3_TLS_ENDPOINT='https://127.0.0.1:%s'\n" "$port"
    printf "export BACKY_TEST_S3_CA_FILE='%s'\n" "$out/ca.pem"
}

cmd_stop() {
    local out=${1:-} pid end
    [ -n "$out" ] && [ -d "$out" ] || die "give the output directory"
    out=$(cd "$out" && pwd -P)
    pid=$(live_pid "$out")
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null || true # a fault test may have left it stopped
    kill -TERM "$pid" 2>/dev/null || true
    end=$(( $(date +%s) + 30 ))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$end" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.1
    done
    rm -f "$out/radosgw.pid"
}

cmd_pid() {
    local out=${1:-}
    [ -n "$out" ] && [ -d "$out" ] || die "give the output directory"
    out=$(cd "$out" && pwd -P)
    live_pid "$out"
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    pid) shift; cmd_pid "$@" ;;
    *) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0" | sed '$d' >&2; exit 2 ;;
esac
