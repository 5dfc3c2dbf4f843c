# shellcheck shell=bash
# Shared by the router benches (benches/cps/run, benches/sustained/run),
# sourced after ops/lib.sh: CPU, memory and drop accounting of the proxy
# under test, SIPp trunks in the background, and starting dialmark-router
# (with Redis routing records written by the tracker and ClickHouse) or
# Kamailio with benches/kamailio/kamailio.cfg on the same records.
#
# The caller sets: VAR (state dir), RUN_DIR (this run's dir), TARGET
# (dialmark | kamailio), REDIS_PORT, TRUNK_A, TRUNK_B, DM_SIP,
# ROUTER_HTTP, CH_HTTP, CH_TCP, CH_INTER, CH_DB, KAM_SIP, KAM_CFG,
# KAM_CHILDREN, DESTINATION, STATIC_NUMBER, POOL_NUMBER,
# DIALMARK_RUST_LOG, and log/die functions. Optional: ROUTER_EXTRA
# (lines for [router]), PROBE_INTERVAL (seconds, default 10), KAM_SHM_MB
# (Kamailio shared memory, default 1024), KAM_DLG_HASH_SIZE (its dialog
# hash table, default 4096).

# ---------------------------------------------------------------- helpers

# Sum of utime+stime (clock ticks) of the given PIDs.
ticks() {
  local p total=0 t
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') || continue
    total=$((total + t))
  done
  echo "$total"
}

# Jiffies of the whole machine: user+nice+system (what processes account
# for), total, irq+softirq, steal.
box_jiffies() {
  awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print $2+$3+$4, t, $7+$8, $9}' /proc/stat
}

# UDP datagrams the kernel dropped for a full receive buffer (machine-wide).
udp_drops() {
  awk '/^Udp:/{if(!h){for(i=1;i<=NF;i++) c[$i]=i; h=1} else print $c["RcvbufErrors"]}' /proc/net/snmp
}

# Datagrams dropped at the sockets bound to local PORT (the proxy's own,
# as opposed to the carrier's or trunks'): /proc/net/udp's last column.
port_drops() {
  awk -v p="$(printf '%04X' "$1")" 'NR>1 {split($2,a,":"); if (a[2]==p) d+=$NF} END {print d+0}' /proc/net/udp
}

# The proxy's PIDs: the main process and its children (Kamailio forks).
proxy_pids() {
  local main
  main=$(cat "$PROXY_PIDFILE" 2>/dev/null) || return 0
  echo "$main"
  pgrep -P "$main" 2>/dev/null || true
}

# Sum of Pss and of VmRSS (kB) over the proxy's processes.
mem_kb() {
  local p pss=0 rss=0 a b
  for p in $(proxy_pids); do
    a=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    b=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    pss=$((pss + ${a:-0})); rss=$((rss + ${b:-0}))
  done
  echo "$pss $rss"
}

# Samples mem_kb every 0.5 s into FILE (max so far) until killed.
mem_sampler() {
  local file=$1 maxp=0 maxr=0 p r
  while :; do
    read -r p r < <(mem_kb)
    [ "$p" -gt "$maxp" ] && maxp=$p
    [ "$r" -gt "$maxr" ] && maxr=$r
    echo "$maxp $maxr" >"$file.tmp" && mv "$file.tmp" "$file"
    sleep 0.5
  done
}

# A build or the test suite is running (process names, not command lines:
# other processes carry ~/.cargo in their environment or arguments).
busy() {
  local n
  for n in cargo rustc cargo-clippy clippy-driver; do
    pgrep -x "$n" >/dev/null && return 0
  done
  pgrep -f '(^|[ /])ops/test( |$)' >/dev/null && return 0
  # anything else keeping the machine over 20% busy (our idle proxy and
  # trunks included)
  local a b
  read -ra a < <(box_jiffies); sleep 3; read -ra b < <(box_jiffies)
  [ $(( (b[0] - a[0]) * 100 )) -gt $(( (b[1] - a[1]) * 20 )) ]
}

wait_quiet() {
  [ "${BENCH_NO_WAIT:-0}" = 1 ] && return 0
  local i
  for i in $(seq 1 "${1:-40}"); do
    if ! busy; then
      return 0
    fi
    log "cargo / rustc / ops/test running or the machine is busy; waiting (minute $i of 40) so the measurement neither disturbs nor is disturbed"
    sleep 60
  done
  die "the machine did not become quiet in 40 minutes; not measuring"
}

# Stops everything this script started, by PID file (never by name).
STARTED_PIDFILES=()
stop_all() {
  local f
  if [ -n "${SAMPLER_PID:-}" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; fi
  if [ -n "${UAC_PID:-}" ]; then kill "$UAC_PID" 2>/dev/null || true; UAC_PID=; fi
  for f in "${STARTED_PIDFILES[@]}"; do
    dm_stop_pid "$(basename "$f" .pid)" "$f" || true
  done
  STARTED_PIDFILES=()
  if [ "${STARTED_REDIS:-0}" = 1 ]; then dm_redis_stop "$VAR/redis" || true; STARTED_REDIS=0; fi
  if [ "${STARTED_CH:-0}" = 1 ]; then dm_clickhouse_stop "$VAR/clickhouse" || true; STARTED_CH=0; fi
}

# sipp_bg NAME PORT SCENARIO: a SIPp trunk in the background (-aa answers OPTIONS);
# SIPP_BUFF_BYTES (when set) sizes its socket buffers (-buff_size).
sipp_bg() {
  local name=$1 port=$2 sf=$3 out
  mkdir -p "$RUN_DIR/$name"
  # sipp -bg forks, prints the child's PID and exits non-zero
  # BENCH_SIPP_TRACE=1: SIPp's message and error logs in the run's folder.
  out=$(cd "$RUN_DIR/$name" && sipp -sf "$sf" -i 127.0.0.1 -p "$port" -aa -nostdin -bg \
    ${SIPP_BUFF_BYTES:+-buff_size "$SIPP_BUFF_BYTES"} ${BENCH_SIPP_TRACE:+-trace_msg -trace_err} 2>&1) || true
  echo "$out" | grep -o 'PID=\[[0-9]*\]' | tr -dc '0-9' >"$RUN_DIR/$name.pid"
  STARTED_PIDFILES+=("$RUN_DIR/$name.pid")
  [ -s "$RUN_DIR/$name.pid" ] && dm_pid_alive "$RUN_DIR/$name.pid" || die "sipp $name failed to start: $out"
}


# CPU ticks of the helpers: both trunks, Redis, ClickHouse (when running).
helper_ticks() {
  local tr rd ch=0
  tr=$(ticks "$(cat "$RUN_DIR/trunk-a.pid")" "$(cat "$RUN_DIR/trunk-b.pid")")
  rd=$(ticks "$(cat "$VAR/redis/redis.pid")")
  [ "$TARGET" = dialmark ] && ch=$(ticks "$(cat "$VAR/clickhouse/clickhouse.pid")")
  echo "$tr $rd $ch"
}

# build_label: the router build the reports name: the commit it was built
# from (for a pinned DIALMARK_BIN, the COMMIT file beside it; else the
# checkout's HEAD, "+uncommitted" when the router's sources differ from it)
# and when it was built.
build_label() {
  local rev pin
  pin=$(dirname "${DIALMARK_BIN:-/nonexistent/x}")/COMMIT
  if [ -n "${DIALMARK_BIN:-}" ] && [ -f "$pin" ]; then
    rev="$(cat "$pin") (pinned binary)"
  else
    rev="$(git -C "$DM_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$DM_ROOT" diff --quiet HEAD -- sip-router schemas 2>/dev/null || echo '+uncommitted')"
  fi
  echo "router $rev built $(date -u -r "$ROUTER_BIN" '+%Y-%m-%d %H:%M UTC')"
}

build_dialmark() {
  if [ -n "${DIALMARK_BIN:-}" ]; then
    [ -x "$DIALMARK_BIN" ] || die "DIALMARK_BIN=$DIALMARK_BIN is not executable"
    ROUTER_BIN=$DIALMARK_BIN
    TRACKER_BIN=${DIALMARK_TRACKER_BIN:-$(dirname "$DIALMARK_BIN")/dialmark-tracker}
  else
    log "building the release router and tracker"
    cargo build --release -p dialmark-router --bin dialmark-router -p dialmark-tracker --bin dialmark-tracker --quiet \
      || die "cargo build --release failed"
    ROUTER_BIN="$DM_ROOT/target/release/dialmark-router"
    TRACKER_BIN="$DM_ROOT/target/release/dialmark-tracker"
  fi
  [ -x "$TRACKER_BIN" ] || die "no tracker binary next to the router ($TRACKER_BIN); set DIALMARK_TRACKER_BIN"
}

start_dialmark() {
  dm_clickhouse_start "$VAR/clickhouse" "$CH_HTTP" "$CH_TCP" "$CH_INTER"
  STARTED_CH=1
  curl -sf "http://127.0.0.1:$CH_HTTP/" --data-binary "DROP DATABASE IF EXISTS $CH_DB" >/dev/null
  cat >"$RUN_DIR/dialmark.toml" <<EOF
# generated by benches/cps/run
[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"

[clickhouse]
url = "http://127.0.0.1:$CH_HTTP"
database = "$CH_DB"

[sink]
flush_ms = 1000
spool_dir = "$RUN_DIR/spool"
fsync = "never"

[router]
udp = "127.0.0.1:$DM_SIP"
http = "127.0.0.1:$ROUTER_HTTP"
trusted_sources = ["127.0.0.1/32"]
reject_code = 404
provisional_timeout_ms = 2000
ring_timeout_seconds = 20
overall_timeout_seconds = 60
max_call_seconds = 14400
route_cache_ms = 5000
${ROUTER_EXTRA:-}

[router.probe]
interval_seconds = ${PROBE_INTERVAL:-10}
timeout_ms = 1000
down_after = 3
up_after = 2

[[router.trunks]]
name = "trunk-a"
address = "127.0.0.1:$TRUNK_A"
priority = 1

[[router.trunks]]
name = "trunk-b"
address = "127.0.0.1:$TRUNK_B"
priority = 2
EOF
  cat >"$RUN_DIR/inventory.toml" <<EOF
# generated by benches/cps/run: one site, a one-number pool, one static number
[[sites]]
id = "bench"
origins = []
replace = ["+74950000000"]
default_pool = "bench"

[[pools]]
id = "bench"
site = "bench"
destinations = ["$DESTINATION"]
trunk_group = "default"
range_start = "$POOL_NUMBER"
count = 1

[[static_numbers]]
numbers = ["$STATIC_NUMBER"]
site = "bench"
source_label = "bench-cps"
destinations = ["$DESTINATION"]
EOF
  "$ROUTER_BIN" --config "$RUN_DIR/dialmark.toml" check-config >/dev/null
  # provisioning as ops/up does it: the tracker CLI writes the routing records
  "$TRACKER_BIN" --config "$RUN_DIR/dialmark.toml" migrate >"$RUN_DIR/migrate.log" 2>&1 \
    || die "tracker migrate failed; see $RUN_DIR/migrate.log"
  "$TRACKER_BIN" --config "$RUN_DIR/dialmark.toml" admin apply "$RUN_DIR/inventory.toml" >"$RUN_DIR/provision.log" 2>&1 \
    || die "tracker admin apply failed; see $RUN_DIR/provision.log"
  PROXY_PIDFILE="$RUN_DIR/router.pid"
  RUST_LOG=$DIALMARK_RUST_LOG NO_COLOR=1 dm_spawn router "$PROXY_PIDFILE" "$RUN_DIR/router.log" \
    "$ROUTER_BIN" --config "$RUN_DIR/dialmark.toml" serve
  STARTED_PIDFILES+=("$PROXY_PIDFILE")
  dm_wait router 30 curl -sf "http://127.0.0.1:$ROUTER_HTTP/healthz"
  PROXY_PORT=$DM_SIP
}

start_kamailio() {
  # The peer of this bench only, so ops/up does not install it.
  if ! command -v kamailio >/dev/null || [ ! -f /usr/lib/x86_64-linux-gnu/kamailio/modules/ndb_redis.so ]; then
    dm_apt_install kamailio kamailio-redis-modules
  fi
  # The same routing record the tracker writes (schemas/src/layout.rs
  # RouteRecord::to_fields), written directly: Kamailio needs no ClickHouse.
  local n
  for n in "$STATIC_NUMBER:static:bench-cps:" "$POOL_NUMBER:pool::bench"; do
    IFS=: read -r num kind label pool <<<"$n"
    redis-cli -p "$REDIS_PORT" hset "dm:route:$num" status active kind "$kind" site bench pool "$pool" \
      destinations "$DESTINATION" trunk_group default source_label "$label" status_since "$(date +%s)" >/dev/null
  done
  mkdir -p "$RUN_DIR/acc"
  printf '# setid uri flags(8=probe) priority(higher first) attrs\n1 sip:127.0.0.1:%s 8 10 duid=trunk-a\n1 sip:127.0.0.1:%s 8 5 duid=trunk-b\n' \
    "$TRUNK_A" "$TRUNK_B" >"$RUN_DIR/dispatcher.list"
  PROXY_PIDFILE="$RUN_DIR/kamailio.pid"
  export KAM_SIP_PORT=$KAM_SIP KAM_REDIS_PORT=$REDIS_PORT KAM_DS_LIST="$RUN_DIR/dispatcher.list" \
    KAM_ACC_DIR="$RUN_DIR/acc" KAM_TRUSTED=127.0.0.1/32 KAM_CHILDREN KAM_DLG_HASH_SIZE=${KAM_DLG_HASH_SIZE:-4096}
  kamailio -c -f "$KAM_CFG" >"$RUN_DIR/kamailio-check.log" 2>&1 || die "kamailio -c failed; see $RUN_DIR/kamailio-check.log"
  # -DD: stay in the foreground (our PID is the main process), -E: log to stderr
  nohup kamailio -f "$KAM_CFG" -m "${KAM_SHM_MB:-1024}" -P "$RUN_DIR/kamailio.main.pid" -DD -E >"$RUN_DIR/kamailio.log" 2>&1 &
  echo $! >"$PROXY_PIDFILE"
  STARTED_PIDFILES+=("$PROXY_PIDFILE")
  local i
  for i in $(seq 1 50); do
    [ "$(pgrep -P "$(cat "$PROXY_PIDFILE")" 2>/dev/null | wc -l)" -ge "$KAM_CHILDREN" ] && break
    sleep 0.2
  done
  sleep 1
  dm_pid_alive "$PROXY_PIDFILE" || die "kamailio exited; see $RUN_DIR/kamailio.log"
  PROXY_PORT=$KAM_SIP
}

