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

# cpu_ticks_by_kind PID: clock ticks (utime + stime) used so far by PID's
# threads, as "loops producers librdkafka other": event loops
# (sluice-core-N), producer threads (sluice-producer-N and rdkafka's poll
# thread), librdkafka's own threads (rdk:*), the rest. The name in
# /proc/*/stat may hold spaces, so fields are counted after its ')'.
cpu_ticks_by_kind() {
  local task
  for task in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$task/comm" 2>/dev/null)" "$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}')"
  done | awk -F'\t' '
    { kind = "other" }
    $1 ~ /^sluice-core/ { kind = "loops" }
    $1 ~ /^sluice-produce|^producer poll/ { kind = "producers" }
    $1 ~ /^rdk:/ { kind = "librdkafka" }
    { ticks[kind] += $2 }
    END { printf "%d %d %d %d\n", ticks["loops"], ticks["producers"], ticks["librdkafka"], ticks["other"] }'
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
