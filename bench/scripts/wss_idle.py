# Holds N idle WebSocket-over-TLS tunnels through a proxy, then checks each
# echoes; prints the proxy's RSS and descriptors per tunnel. Usage:
#   python3 bench/scripts/wss_idle.py PORT N PROXY_PID   (Host app0.repl.co,
#   any certificate accepted; the proxy must route app0 to a WebSocket echo).
# Used for bench/results/tunnels/README.md until the compare harness has TLS stages.
import socket, ssl, sys, time, os, base64
port = int(sys.argv[1]); n = int(sys.argv[2]); pid = int(sys.argv[3])
def rss(): 
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
time.sleep(0.5)
r0, f0 = rss(), fds()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    t = ctx.wrap_socket(s, server_hostname="app0.repl.co")
    key = base64.b64encode(os.urandom(16)).decode()
    t.sendall(f"GET /ws HTTP/1.1\r\nHost: app0.repl.co\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += t.recv(4096)
    assert resp.startswith(b"HTTP/1.1 101"), resp[:100]
    conns.append(t)
time.sleep(2)
r1, f1 = rss(), fds()
# echo check: a masked text frame "hi"
ok = 0
for t in conns:
    mask = os.urandom(4); payload = b"hi"
    t.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
for t in conns:
    d = t.recv(16)
    if d[2:4] == b"hi": ok += 1
print(f"{n} wss tunnels: edge RSS +{(r1-r0)/n:.1f} KiB per tunnel, fds +{(f1-f0)/n:.2f} per tunnel, echoed {ok}/{n}")
