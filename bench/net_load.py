"""HTTP load for bench/net.py: N sequential new-connection GETs of a 6-byte page (latency), then
three GETs of /big (throughput). Usage: net_load.py HOST PORT [N]."""
import socket, sys, time, statistics
host, port = sys.argv[1], int(sys.argv[2])
def get(path, sock=None):
    s = sock or socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    got = len(body)
    while got < n:
        c = s.recv(1 << 20)
        if not c: break
        got += len(c)
    if sock is None: s.close()
    return got
lat = []
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 200):
    t = time.perf_counter(); get("/"); lat.append((time.perf_counter() - t) * 1e3)
lat.sort()
tp = []
for _ in range(3):
    t = time.perf_counter(); n = get("/big"); tp.append(n / (time.perf_counter() - t) / 1e6)
print(f"connect+GET latency ms: median {statistics.median(lat):.2f} p99 {lat[int(len(lat)*0.99)-1]:.2f}; throughput MB/s: median {statistics.median(tp):.1f} (n={n})")
