"""Open N keep-alive connections to HOST:PORT, make one request on each,
leave them idle, and print the server's RSS growth per connection.

Usage: idle_connections.py HOST PORT PID N
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    host, port, pid, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    # Warm the server's pools with a few connections first.
    warm = [socket.create_connection((host, port)) for _ in range(16)]
    for sock in warm:
        sock.sendall(request)
        sock.recv(4096)
    time.sleep(0.5)
    before = rss_kib(pid)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port))
        sock.sendall(request)
        sockets.append(sock)
    for sock in sockets:
        data = sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 200"), data[:40]
    time.sleep(1.0)
    after = rss_kib(pid)
    print(f"{count} idle connections: RSS {before} KiB -> {after} KiB, "
          f"{(after - before) * 1024 / count:.0f} bytes per connection")
    for sock in sockets + warm:
        sock.close()


if __name__ == "__main__":
    main()
