#!/usr/bin/env python3
# Measures three hostile-client cases against a running sluice (issue 10,
# holes 1-3): RSS growth and bytes the
# server took before answering or closing.
#   bench/hostile_probe.py PORT PID KEY hole1 hole2 hole3
import socket, sys, time, threading
port, pid, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
def conn():
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(40); return s
def hole1(total_mib=64):
    before = rss(); s = conn()
    s.sendall(f"POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    piece = (b"1;ext=" + b"x"*1000 + b"\r\na\r\n") * 64
    sent = 0; peak = before; answer = None; t0 = time.time()
    s.settimeout(0.2)
    while sent < total_mib << 20:
        try: sent += s.send(piece)
        except socket.timeout: pass
        except OSError: break
        peak = max(peak, rss())
        try:
            data = s.recv(200, socket.MSG_DONTWAIT)
            if data: answer = data.split(b"\r\n")[0]; break
        except (BlockingIOError, socket.timeout): pass
        except OSError: break
    s.settimeout(35)
    if answer is None:
        try: answer = s.recv(200).split(b"\r\n")[0]
        except Exception as e: answer = repr(e)
    peak = max(peak, rss())
    print(f"hole1: answer {answer!r} after {time.time()-t0:.1f}s; client sent {sent/2**20:.1f} MiB; RSS +{(peak-before)/2**20:.1f} MiB peak, +{(rss()-before)/2**20:.1f} MiB after")
def hole2(n=100):
    before = rss(); peak=[before]; stop=False
    def sample():
        while not stop: peak[0]=max(peak[0], rss()); time.sleep(0.02)
    t=threading.Thread(target=sample); t.start()
    def one(out):
        s = conn(); s.settimeout(10); t0=time.time()
        s.sendall(f"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: {4<<20}\r\n\r\n".encode())
        sent=0
        try:
            while sent < 4<<20: sent += s.send(b"a"*65536)
        except OSError: pass
        try: out.append((s.recv(100).split(b"\r\n")[0], time.time()-t0, sent))
        except Exception as e: out.append((repr(e), time.time()-t0, sent))
    out=[]; ts=[threading.Thread(target=one,args=(out,)) for _ in range(n)]
    [x.start() for x in ts]; [x.join() for x in ts]; stop=True; t.join()
    statuses={}
    for a,_,_ in out: statuses[a]=statuses.get(a,0)+1
    print(f"hole2: {n} unauthenticated 4 MiB uploads: {statuses}; slowest answer {max(o[1] for o in out):.1f}s; client sent {sum(o[2] for o in out)/2**20:.0f} MiB in all; RSS +{(peak[0]-before)/2**20:.1f} MiB peak")
def hole3(seconds=15):
    before = rss()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port)); s.settimeout(1)
    req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 256; sent=0; t0=time.time(); end="still open"
    while time.time()-t0 < seconds:
        try: sent += s.send(req)
        except socket.timeout: pass
        except OSError as e: end=f"closed by server after {time.time()-t0:.1f}s ({e.strerror})"; break
    print(f"hole3: client pipelined {sent/2**20:.1f} MiB without reading: {end}; RSS +{(rss()-before)/2**20:.1f} MiB")
for h in sys.argv[4:]: globals()[h]()
