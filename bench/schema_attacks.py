#!/usr/bin/env python3
# Event contracts under attack (issue 30, items 1 and 3): for each attack
# class, a fresh `sluice --dev --cores 1` with the attack's schema, and what
# one request or one reload cost it: the process's CPU time (all threads),
# its peak resident memory, the attacker's answer and, for the request
# attacks, the slowest answer a victim got meanwhile on another connection
# (a small valid event every 10 ms).
#   bench/schema_attacks.py BINARY [ATTACK ...]
# ATTACK: unique unique_max pattern pattern_max worst plain_max chain
# doubling patterns files files_max (default: unique pattern chain doubling
# patterns files). Prints one line each; a request attack's figures are
# medians of ROUNDS (3) fresh servers.
import json, os, random, signal, socket, subprocess, sys, tempfile, threading, time

KEY = "cs_live_bench_key"
BINARY = sys.argv[1]


def cpu_by_thread(pid):
    """Seconds on CPU per thread name (schedstat: nanoseconds)."""
    seconds = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{task}/comm").read().strip()
            ran = int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0]) / 1e9
        except OSError:
            continue
        seconds[name] = seconds.get(name, 0.0) + ran
    return seconds


def cpu_seconds(pid):
    return sum(cpu_by_thread(pid).values())


def core_seconds(pid):
    return sum(v for k, v in cpu_by_thread(pid).items() if k.startswith("sluice-core"))


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, files):
        self.dir = tempfile.mkdtemp(prefix="sluice-attack-")
        self.schemas = os.path.join(self.dir, "schemas")
        os.makedirs(self.schemas)
        for name, text in files.items():
            self.write(name, text)
        keys = os.path.join(self.dir, "keys.toml")
        open(keys, "w").write(f'[[keys]]\nkey = "{KEY}"\ntenant_id = "tenant_a"\n')
        config = os.path.join(self.dir, "sluice.toml")
        open(config, "w").write(f'[schemas]\ndir = "{self.schemas}"\n')
        self.log = os.path.join(self.dir, "log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env["SLUICE_AUTH_RELOAD_INTERVAL_MS"] = "100"
        env["RUST_LOG"] = "info,librdkafka=off"
        self.process = subprocess.Popen(
            [BINARY, "--dev", "--cores", "1", "--listen", "127.0.0.1:0",
             "--keys-file", keys, "--config", config],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)
        self.port = None
        deadline = time.time() + 60
        while self.port is None and time.time() < deadline:
            for line in open(self.log):
                if "sluice ready" in line and "address=" in line:
                    self.port = int(line.split("address=")[1].split()[0].rsplit(":", 1)[1])
            time.sleep(0.05)
        if self.port is None:
            raise SystemExit(f"{BINARY} did not start:\n{open(self.log).read()[-2000:]}")
        self.wait_ready()

    def write(self, name, text):
        path = os.path.join(self.schemas, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write(text)

    def wait_ready(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if get(self.port, "/readyz", 1.0) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)

    def logs(self):
        return open(self.log).read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def get(port, path, timeout):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    status = int(s.recv(64).split()[1])
    s.close()
    return status


def post(port, body, timeout):
    """(status or None, seconds) of one event on its own connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    data = body.encode()
    started = time.time()
    s.sendall(f"POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    try:
        status = int(s.recv(64).split()[1])
    except (OSError, IndexError, ValueError):
        status = None
    took = time.time() - started
    s.close()
    return status, took


def event(event_type, properties):
    return json.dumps({"user_id": "u", "event_type": event_type,
                       "event_time": int(time.time() * 1000)})[:-1] + f',"properties":{properties}}}'


class Victim(threading.Thread):
    """A small valid event every 10 ms on one keep-alive connection."""
    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.slowest, self.count, self.failed = port, False, 0.0, 0, 0

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        while not self.stop:
            data = event("victim", "{}").encode()
            started = time.time()
            s.sendall(f"POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            try:
                answer = s.recv(4096)
            except OSError:
                answer = b""
            if not answer.startswith(b"HTTP/1.1 202"):
                self.failed += 1
                s = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            self.slowest = max(self.slowest, time.time() - started)
            self.count += 1
            time.sleep(0.01)


ROUNDS = int(os.environ.get("ROUNDS", "3"))


def request_attack(name, schema, body, timeout=120):
    """ROUNDS fresh servers; each figure is the median of the rounds."""
    rounds = []
    for _ in range(ROUNDS):
        server = Server({"attack.json": schema} if schema else {})
        pid = server.process.pid
        victim = Victim(server.port)
        victim.start()
        time.sleep(0.3)
        cpu, core = cpu_seconds(pid), core_seconds(pid)
        status, took = post(server.port, body, timeout)
        if server.process.poll() is None:
            cpu, core = cpu_seconds(pid) - cpu, core_seconds(pid) - core
        else:
            cpu = core = float("nan")
        time.sleep(0.2)
        victim.stop = True
        victim.join(timeout + 5)
        alive = server.process.poll() is None
        rss = peak_rss_mib(pid) if alive else float("nan")
        rounds.append((took, cpu, core, rss, victim.slowest, status, alive))
        server.stop()
        if took > 30:
            break  # one round of a minutes-long attack is enough
    median = lambda index: sorted(r[index] for r in rounds)[len(rounds) // 2]
    statuses = sorted({str(r[5]) for r in rounds})
    died = "" if all(r[6] for r in rounds) else ", SERVER DIED"
    print(f"{name}: {len(body)} bytes, answer {'/'.join(statuses)} after {median(0):.3f} s, "
          f"CPU {median(1)*1000:.1f} ms (the core's {median(2)*1000:.1f} ms; victim included), "
          f"peak RSS {median(3):.0f} MiB, victim slowest {median(4)*1000:.1f} ms "
          f"(median of {len(rounds)}){died}", flush=True)


def load_attack(name, files, probe=None, timeout=120):
    """Writes `files` into a running server's schema directory; waits for the
    reload's verdict; then optionally sends one event of type `probe`."""
    server = Server({"fine.json": '{"type":"object"}'})
    pid = server.process.pid
    baseline_rss = peak_rss_mib(pid)
    cpu = cpu_seconds(pid)
    started = time.time()
    staging = os.path.join(server.dir, "staging")
    os.makedirs(staging)
    for path, text in files.items():
        full = os.path.join(staging, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        open(full, "w").write(text)
    # Renamed in: the reload sees a file whole. One file applies to every
    # tenant; many go in a tenant's directory, in one rename.
    if len(files) == 1:
        (path,) = files
        os.rename(os.path.join(staging, path), os.path.join(server.schemas, path))
    else:
        os.rename(staging, os.path.join(server.schemas, "tenant_attack"))
    verdict = "none within the timeout"
    while time.time() - started < timeout:
        logs = server.logs()
        if "event schemas reloaded" in logs:
            verdict = "reloaded (accepted)"
            break
        if "event schema not loaded" in logs:
            line = [l for l in logs.splitlines() if "event schema not loaded" in l][0]
            verdict = "refused: " + line.split("reason=", 1)[-1][:150]
            break
        if server.process.poll() is not None:
            verdict = "process died"
            break
        time.sleep(0.02)
    took = time.time() - started
    alive = server.process.poll() is None
    cpu = cpu_seconds(pid) - cpu if alive else float("nan")
    rss = peak_rss_mib(pid) if alive else float("nan")
    line = (f"{name}: reload {took:.2f} s, {verdict}; CPU {cpu:.2f} s, "
            f"peak RSS {rss:.0f} MiB (at start {baseline_rss:.0f})")
    if probe and alive:
        status, probe_took = post(server.port, event(probe, "{}"), 10)
        try:
            health = get(server.port, "/healthz", 2)
        except OSError:
            health = None
        line += (f"; then one {probe} event: {status} after {probe_took:.2f} s, "
                 f"/healthz {health}, process {'alive' if server.process.poll() is None else 'DEAD'}")
    print(line, flush=True)
    server.stop()


def random_ab(n):
    generator = random.Random(7)
    return "".join(generator.choice("ab") for _ in range(n))


def decimals(n):
    return ",".join(f"1.{i + 1:020d}" for i in range(n))


UNIQUE = '{"properties":{"properties":{"properties":{"values":{"type":"array","uniqueItems":true}}}}}'
PATTERN = '{"properties":{"properties":{"properties":{"text":{"type":"string","pattern":"a[ab]{1000}[^ab]"}}}}}'

# Within every load budget (expansion 5, depth 4), 2^levels validations
# of the innermost value: the meter cuts it at the event's budget.
DOUBLING = json.dumps({"$defs": {"t": {"properties": {"a": {"allOf": [
    {"$ref": "#/$defs/t"}, {"$ref": "#/$defs/t"}]}}}}, "$ref": "#/$defs/t"})


def nested(levels):
    value = 1
    for _ in range(levels):
        value = {"a": value}
    return value


ATTACKS = {
    "unique": lambda: request_attack(
        "uniqueItems, 2,000 decimals that round to one f64", UNIQUE,
        event("attack", f'{{"values":[{decimals(2000)}]}}')),
    "unique_max": lambda: request_attack(
        "uniqueItems, 22,000 decimals (an event near 512 KiB)", UNIQUE,
        event("attack", f'{{"values":[{decimals(22000)}]}}')),
    "pattern": lambda: request_attack(
        "pattern a[ab]{1000}[^ab], 100 KB of random a/b", PATTERN,
        event("attack", f'{{"text":"{random_ab(100_000)}"}}')),
    "pattern_max": lambda: request_attack(
        "pattern a[ab]{1000}[^ab], 500 KB of random a/b", PATTERN,
        event("attack", f'{{"text":"{random_ab(500_000)}"}}')),
    "worst": lambda: request_attack(
        "two $refs per level on 24 nested levels, padded to 512 KiB", DOUBLING,
        json.dumps({"user_id": "u", "event_type": "attack", "event_time": int(time.time() * 1000),
                    "a": nested(24), "pad": "x" * 500_000})),
    "plain_max": lambda: request_attack(
        "no schema (baseline), the same 512 KiB event as worst", None,
        json.dumps({"user_id": "u", "event_type": "attack", "event_time": int(time.time() * 1000),
                    "a": nested(24), "pad": "x" * 500_000})),
    "plain_unique_max": lambda: request_attack(
        "no schema (baseline), the same 22,000 decimals as unique_max", None,
        event("attack", f'{{"values":[{decimals(22000)}]}}')),
    "chain": lambda: load_attack(
        "$ref chain of 15,000", {"chain.json": json.dumps({
            "$defs": {**{f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(15000)},
                      "a15000": {"type": "object"}},
            "$ref": "#/$defs/a0"})}, probe="chain"),
    "doubling": lambda: load_attack(
        "allOf of two $refs per level, 60 levels", {"doubling.json": json.dumps({
            "$defs": {**{f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2} for i in range(60)},
                      "a60": {"type": "object"}},
            "$ref": "#/$defs/a0"})}, probe="doubling", timeout=30),
    "patterns": lambda: load_attack(
        "3,000 patterns [a-z]{i}x in one file", {"patterns.json": json.dumps({
            "properties": {f"p{i}": {"pattern": f"[a-z]{{{i}}}x"} for i in range(3000)}})}),
    "files": lambda: load_attack(
        "2,000 small files", {f"type_{i}.json": '{"type":"object","properties":{"a":{"type":"string"}}}'
                              for i in range(2000)}),
    "files_max": lambda: load_attack(
        "1,000 small files (schemas.files_max)",
        {f"type_{i}.json": '{"type":"object","properties":{"a":{"type":"string"}}}' for i in range(999)}),
}

if __name__ == "__main__":
    wanted = sys.argv[2:] or ["unique", "pattern", "chain", "doubling", "patterns", "files"]
    for name in wanted:
        ATTACKS[name]()
