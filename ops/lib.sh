# shellcheck shell=bash
# Shared helpers of ops/up, ops/down and ops/test: install what is missing,
# start and stop local services on loopback with their data under var/.
# Every process we start is tracked by a PID file and stopped by it, never
# by name, so nothing else on the machine is touched.

DM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DM_ROOT

dm_log() { printf '[dialmark] %s\n' "$*" >&2; }
dm_die() { printf '[dialmark] ERROR: %s\n' "$*" >&2; exit 1; }

# Debian packages the project needs, by the command that proves each is there.
DM_PACKAGES=(
  "redis-server:redis-server"
  "redis-cli:redis-tools"
  "clickhouse-server:clickhouse-server"
  "clickhouse-client:clickhouse-client"
  "sipp:sip-tester"
  "curl:curl"
  "python3:python3"
  "node:nodejs"
  "npm:npm"
)

# dm_install [extra "cmd:package" ...]: apt-get install whatever is missing.
dm_install() {
  local missing=() entry cmd pkg
  for entry in "${DM_PACKAGES[@]}" "$@"; do
    cmd=${entry%%:*}; pkg=${entry#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  dm_apt_install "${missing[@]}"
}

# dm_apt_install PACKAGE...: apt-get install these (as root or via sudo).
dm_apt_install() {
  dm_log "installing: $*"
  command -v apt-get >/dev/null || dm_die "apt-get not found; install $* by hand"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || dm_die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || dm_die "apt-get install $* failed"
}

# dm_pid_alive PIDFILE: the process in PIDFILE is running.
dm_pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# dm_stop_pid NAME PIDFILE [SECONDS]: TERM, wait up to SECONDS (10), then KILL.
dm_stop_pid() {
  local name=$1 pidfile=$2 secs=${3:-10} pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((secs * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      dm_log "$name did not stop on TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# dm_router_stop CONFIG PIDFILE: TERM the router and wait for its drain
# (router.drain_seconds in CONFIG, default 30) plus 30 s to hang up what is
# left and flush its rows: a draining node is never SIGKILLed.
dm_router_stop() {
  local drain
  drain=$(sed -n 's/^[[:space:]]*drain_seconds[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n 1 || true)
  dm_stop_pid router "$2" $((10#${drain:-30} + 30))
}

# dm_wait NAME SECONDS COMMAND...: retry COMMAND until it succeeds.
dm_wait() {
  local name=$1 secs=$2 i
  shift 2
  for i in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  dm_die "$name not ready after ${secs}s"
}

# dm_redis_start DIR PORT [extra redis-server args]
dm_redis_start() {
  local dir port=$2
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  shift 2
  if dm_pid_alive "$dir/redis.pid"; then
    dm_log "redis on $port already running"
    return 0
  fi
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" "$@" \
    || dm_die "redis-server failed to start; see $dir/redis.log"
  dm_wait "redis :$port" 10 redis-cli -p "$port" ping
}

dm_redis_stop() { dm_stop_pid redis "$1/redis.pid"; }

# dm_clickhouse_start DIR HTTP_PORT TCP_PORT INTERSERVER_PORT
# Runs the Debian clickhouse-server from a config generated from the
# packaged one, with every path under DIR and ports of our own.
dm_clickhouse_start() {
  local dir http=$2 tcp=$3 inter=$4
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log,etc}
  if dm_pid_alive "$dir/clickhouse.pid"; then
    dm_log "clickhouse on $http already running"
    return 0
  fi
  python3 - "$dir" "$http" "$tcp" "$inter" <<'PY' || dm_die "could not write the clickhouse config"
import re, sys
d, http, tcp, inter = sys.argv[1:5]
src = open('/etc/clickhouse-server/config.xml').read()
def tag(name, value):
    global src
    src, n = re.subn(r'<%s>[^<]*</%s>' % (name, name), '<%s>%s</%s>' % (name, value, name), src, count=1)
    if n != 1:
        raise SystemExit('config.xml has no <%s>' % name)
tag('path', d + '/data/')
tag('tmp_path', d + '/tmp/')
tag('user_files_path', d + '/user_files/')
tag('format_schema_path', d + '/format_schemas/')
tag('log', d + '/log/clickhouse-server.log')
tag('errorlog', d + '/log/clickhouse-server.err.log')
tag('http_port', http)
tag('tcp_port', tcp)
tag('interserver_http_port', inter)
src = src.replace('<http_port>', '<listen_host>127.0.0.1</listen_host>\n    <http_port>', 1)
src = re.sub(r'<users_config>[^<]*</users_config>', '<users_config>%s/etc/users.xml</users_config>' % d, src)
open(d + '/etc/config.xml', 'w').write(src)
users = open('/etc/clickhouse-server/users.xml').read()
# LowCardinality is experimental in 18.16; allow it for every query.
users = users.replace('<default>\n', '<default>\n            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>\n', 1)
open(d + '/etc/users.xml', 'w').write(users)
PY
  # Not --daemon: the process we start is the server, so $! is its PID.
  (cd "$dir" || exit 1
   nohup clickhouse-server --config-file="$dir/etc/config.xml" >"$dir/log/stdout.log" 2>&1 &
   echo $! >"$dir/clickhouse.pid")
  dm_wait "clickhouse :$http" 60 curl -sf "http://127.0.0.1:$http/?query=SELECT%201"
}

dm_clickhouse_stop() { dm_stop_pid clickhouse "$1/clickhouse.pid"; }

# dm_clickhouse_cluster_conf CLUSTER ZOOKEEPER DIR:HTTP:TCP:INTER[:SHARD]...:
# writes the cluster CLUSTER into the config.d of every server listed (in
# <remote_servers>, by TCP port on 127.0.0.1; servers with the same SHARD
# are its replicas, SHARD defaults to the server's position). ZOOKEEPER
# (host:port, or empty) also gives each server that ZooKeeper and the
# {shard} and {replica} macros replicated tables need. Run it before the
# servers start: 18.16 reads macros at start only.
dm_clickhouse_cluster_conf() {
  local cluster=$1 zk=$2 spec dir http tcp inter shard n=0 body="" s
  shift 2
  local -A replicas=()
  for spec in "$@"; do
    n=$((n + 1))
    IFS=: read -r dir http tcp inter shard <<<"$spec"
    shard=${shard:-$n}
    replicas[$shard]+="<replica><host>127.0.0.1</host><port>$tcp</port></replica>"
  done
  for s in $(printf '%s\n' "${!replicas[@]}" | sort -n); do
    body+="      <shard><internal_replication>true</internal_replication>${replicas[$s]}</shard>"$'\n'
  done
  n=0
  for spec in "$@"; do
    n=$((n + 1))
    IFS=: read -r dir http tcp inter shard <<<"$spec"
    mkdir -p "$dir/etc/config.d"
    printf '<yandex>\n  <remote_servers>\n    <%s>\n%s    </%s>\n  </remote_servers>\n</yandex>\n' \
      "$cluster" "$body" "$cluster" >"$dir/etc/config.d/cluster-$cluster.xml"
    if [ -n "$zk" ]; then
      printf '<yandex>\n  <zookeeper><node><host>%s</host><port>%s</port></node></zookeeper>\n  <macros><shard>%s</shard><replica>127.0.0.1:%s</replica></macros>\n</yandex>\n' \
        "${zk%:*}" "${zk##*:}" "${shard:-$n}" "$tcp" >"$dir/etc/config.d/zookeeper.xml"
    fi
  done
}

# dm_zookeeper_start DIR PORT: a standalone ZooKeeper on 127.0.0.1:PORT
# (Debian's zookeeper package; replicated ClickHouse tables need one).
dm_zookeeper_start() {
  local dir port=$2
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  if dm_pid_alive "$dir/zookeeper.pid"; then
    dm_log "zookeeper on :$port already running"
    return 0
  fi
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<EOF
tickTime=500
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok
EOF
  dm_spawn zookeeper "$dir/zookeeper.pid" "$dir/zookeeper.log" \
    java -Xmx256m -cp /usr/share/java/zookeeper.jar \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
  dm_wait "zookeeper :$port" 60 dm_zookeeper_ok "$port"
}

# dm_zookeeper_ok PORT: the ZooKeeper on 127.0.0.1:PORT answers "imok".
dm_zookeeper_ok() {
  local answer
  answer=$(exec 3<>"/dev/tcp/127.0.0.1/$1" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null
  [ "$answer" = imok ]
}

dm_zookeeper_stop() { dm_stop_pid zookeeper "$1/zookeeper.pid"; }

# dm_spawn NAME PIDFILE LOGFILE COMMAND...: start a long-running process.
dm_spawn() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  if dm_pid_alive "$pidfile"; then
    dm_log "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  nohup "$@" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

# dm_snippet_build: npm ci + build of js-snippet (skipped when up to date).
dm_snippet_build() {
  local js="$DM_ROOT/js-snippet"
  [ -f "$js/package.json" ] || return 0
  if [ ! -d "$js/node_modules" ] || [ "$js/package-lock.json" -nt "$js/node_modules" ]; then
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error) || dm_die "npm ci in js-snippet failed"
    touch "$js/node_modules"
  fi
  (cd "$js" && npm run --silent build) || dm_die "snippet build failed"
}

# dm_venv: the project's Python venv (var/venv) with the test tools.
dm_venv() {
  local venv="$DM_ROOT/var/venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || dm_die "python3 -m venv failed (install python3-venv)"
  fi
  if ! "$venv/bin/python" -c "import mmdb_writer, netaddr, chdb" 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check mmdb-writer netaddr \
      -r "$DM_ROOT/schemas/check/requirements.txt" >&2 || dm_die "pip install failed"
  fi
  echo "$venv"
}

# dm_redis_cluster_start DIR PORT1 PORT2 PORT3: a 3-master Redis Cluster.
dm_redis_cluster_start() {
  local dir=$1 p
  shift
  for p in "$@"; do
    dm_redis_start "$dir/$p" "$p" --cluster-enabled yes --cluster-config-file "$dir/$p/nodes.conf" \
      --cluster-node-timeout 2000
  done
  local nodes=()
  for p in "$@"; do nodes+=("127.0.0.1:$p"); done
  if ! redis-cli -p "$1" cluster info | grep -q 'cluster_state:ok'; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
      || dm_die "redis cluster create failed; see $dir/create.log"
  fi
  dm_wait "redis cluster" 20 sh -c "redis-cli -p $1 cluster info | grep -q cluster_state:ok"
}

dm_redis_cluster_stop() {
  local dir=$1 p
  shift
  for p in "$@"; do dm_redis_stop "$dir/$p"; done
}
