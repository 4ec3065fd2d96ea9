# shellcheck shell=bash disable=SC2034 # sets variables for its callers (broker_pid, sluice_pid)
# Shared helpers for scripts/bench and tuning/sweep (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  return 1
}

# start_broker CPU OUT_DIR: starts Tansu with the events, dead-letter and overflow topics; sets broker_port, broker_pid.
start_broker() {
  local tansu
  tansu=$(scripts/install-broker)
  broker_port=$(free_port)
  taskset -c "$1" "$tansu" broker --listener-url "tcp://127.0.0.1:$broker_port" \
    --advertised-listener-url "tcp://127.0.0.1:$broker_port" --storage-engine memory://tansu/ \
    >"$2/tansu.log" 2>&1 &
  broker_pid=$!
  wait_port "$broker_port"
  for topic in events_raw events_dlq events_overflow; do
    "$tansu" topic create "$topic" --partitions 3 --broker "tcp://127.0.0.1:$broker_port" >/dev/null
  done
}

# start_sluice CPUS PORT KEYS_FILE [ARGS...]: starts sluice pinned to CPUS; sets sluice_pid.
# SLUICE_BIN picks the binary (default target/release/sluice); SLUICE_ENV
# holds extra environment for it (space-separated NAME=VALUE).
start_sluice() {
  local cpus=$1 port=$2 keys=$3
  shift 3
  # shellcheck disable=SC2086 # SLUICE_ENV is a list of words.
  env ${SLUICE_ENV:-} taskset -c "$cpus" "${SLUICE_BIN:-target/release/sluice}" --listen "127.0.0.1:$port" \
    --brokers "127.0.0.1:$broker_port" --keys-file "$keys" "$@" >>"$keys.log" 2>&1 &
  sluice_pid=$!
  wait_port "$port"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "sluice never became ready" >&2
  return 1
}

# The kind of a sluice thread, from its name in $1 (awk, tab-separated
# input): event loops (sluice-core-N), producer threads (sluice-producer-N
# and rdkafka's poll thread), librdkafka's own threads (rdk:*), the rest.
# shellcheck disable=SC2016 # awk's own $1, not the shell's.
THREAD_KIND_AWK='
  { kind = "other" }
  $1 ~ /^sluice-core/ { kind = "loops" }
  $1 ~ /^sluice-produce|^producer poll/ { kind = "producers" }
  $1 ~ /^rdk:/ { kind = "librdkafka" }'

# cpu_ticks_by_kind PID: clock ticks (utime + stime) used so far by PID's
# threads, as "loops producers librdkafka other" (THREAD_KIND_AWK). The
# name in /proc/*/stat may hold spaces, so fields are counted after its ')'.
cpu_ticks_by_kind() {
  local task
  for task in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$task/comm" 2>/dev/null)" "$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}')"
  done | awk -F'\t' "$THREAD_KIND_AWK"'
    { ticks[kind] += $2 }
    END { printf "%d %d %d %d\n", ticks["loops"], ticks["producers"], ticks["librdkafka"], ticks["other"] }'
}

# task_ctxt_switches TASK_DIR: "voluntary involuntary" context switches of
# one thread so far (/proc/PID/status counts only its own thread).
task_ctxt_switches() {
  local counts
  counts=$(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
    END { printf "%d %d", v, n }' "$1/status" 2>/dev/null)
  echo "${counts:-0 0}"
}

# ctxt_switches_by_kind PID: voluntary and involuntary context switches so
# far of PID's threads by kind (THREAD_KIND_AWK), as "loops_v loops_n
# producers_v producers_n librdkafka_v librdkafka_n other_v other_n".
ctxt_switches_by_kind() {
  local task
  for task in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$task/comm" 2>/dev/null)" "$(task_ctxt_switches "$task")"
  done | awk -F'\t' "$THREAD_KIND_AWK"'
    { split($2, counts, " "); v[kind] += counts[1]; n[kind] += counts[2] }
    END { printf "%d %d %d %d %d %d %d %d\n", v["loops"], n["loops"], v["producers"], n["producers"],
      v["librdkafka"], n["librdkafka"], v["other"], n["other"] }'
}

# process_counters PID...: "ticks voluntary involuntary" so far, summed
# over every thread of the given processes (a whole server: nginx's
# master and worker, the floor).
process_counters() {
  local pid task ticks
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      ticks=$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}')
      echo "${ticks:-0} $(task_ctxt_switches "$task")"
    done
  done | awk '{ t += $1; v += $2; n += $3 } END { printf "%d %d %d\n", t, v, n }'
}

# cpu_us_per_request BEFORE AFTER REQUESTS: "loops producers librdkafka
# other total" in CPU µs per request, from two cpu_ticks_by_kind readings.
cpu_us_per_request() {
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'PY'
import sys
before, after = ([int(x) for x in arg.split()] for arg in sys.argv[1:3])
requests, tick = max(int(float(sys.argv[3])), 1), 1e6 / int(sys.argv[4])
per = [(a - b) * tick / requests for a, b in zip(after, before)]
print(" ".join(f"{x:.2f}" for x in per + [sum(per)]))
PY
}

# per_thousand_requests BEFORE AFTER REQUESTS: each count's growth between
# two readings (ctxt_switches_by_kind, say) per 1,000 requests.
per_thousand_requests() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
before, after = ([int(x) for x in arg.split()] for arg in sys.argv[1:3])
requests = max(int(float(sys.argv[3])), 1)
print(" ".join(f"{(a - b) * 1000 / requests:.1f}" for a, b in zip(after, before)))
PY
}
