# shellcheck shell=bash
# Shared by the bench scripts (after ops/lib.sh): wait for a quiet machine
# before measuring, so the numbers are neither disturbed by nor disturb a
# build, the test suite or another bench.

# Jiffies of the whole machine: user+nice+system, and total.
bench_jiffies() {
  awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print $2+$3+$4, t}' /proc/stat
}

# A build, the test suite or another bench is running, or the machine is
# more than 20% busy over 3 s (our own idle services included). Process
# names, not command lines: other processes carry ~/.cargo in theirs.
bench_busy() {
  local n p a b
  for n in cargo rustc cargo-clippy clippy-driver sipp kamailio redis-benchmark tracker_load attribution chromium; do
    pgrep -x "$n" >/dev/null && return 0
  done
  # ops/test or another bench script (not this one, nor its subshells)
  for p in $(pgrep -f '(^|[ /])(ops/test|benches/[a-z]+/run)( |$)'); do
    [ "$p" = "$$" ] && continue
    [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$$" ] && continue
    return 0
  done
  read -ra a < <(bench_jiffies); sleep 3; read -ra b < <(bench_jiffies)
  [ $(( (b[0] - a[0]) * 100 )) -gt $(( (b[1] - a[1]) * 20 )) ]
}

# bench_wait_quiet TAG: waits up to 40 minutes for a quiet machine
# (BENCH_NO_WAIT=1: measure at once).
bench_wait_quiet() {
  [ "${BENCH_NO_WAIT:-0}" = 1 ] && return 0
  local i
  for i in $(seq 1 40); do
    bench_busy || return 0
    printf '[%s] a build, the tests or another bench is running, or the machine is busy; waiting (minute %d of 40)\n' "$1" "$i" >&2
    sleep 60
  done
  printf '[%s] ERROR: the machine did not become quiet in 40 minutes; not measuring\n' "$1" >&2
  exit 1
}
