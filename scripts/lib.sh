# Shared helpers for scripts/bench and tuning/sweep (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  return 1
}

# start_broker CPU OUT_DIR: starts Tansu with both topics; sets broker_port, broker_pid.
start_broker() {
  local tansu
  tansu=$(scripts/install-broker)
  broker_port=$(free_port)
  taskset -c "$1" "$tansu" broker --listener-url "tcp://127.0.0.1:$broker_port" \
    --advertised-listener-url "tcp://127.0.0.1:$broker_port" --storage-engine memory://tansu/ \
    >"$2/tansu.log" 2>&1 &
  broker_pid=$!
  wait_port "$broker_port"
  for topic in events_raw events_dlq; do
    "$tansu" topic create "$topic" --partitions 3 --broker "tcp://127.0.0.1:$broker_port" >/dev/null
  done
}

# start_sluice CPUS PORT KEYS_FILE [ARGS...]: starts sluice pinned to CPUS; sets sluice_pid.
# SLUICE_BIN picks the binary (default target/release/sluice).
start_sluice() {
  local cpus=$1 port=$2 keys=$3
  shift 3
  taskset -c "$cpus" "${SLUICE_BIN:-target/release/sluice}" --listen "127.0.0.1:$port" \
    --brokers "127.0.0.1:$broker_port" --keys-file "$keys" "$@" >>"$keys.log" 2>&1 &
  sluice_pid=$!
  wait_port "$port"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "sluice never became ready" >&2
  return 1
}
