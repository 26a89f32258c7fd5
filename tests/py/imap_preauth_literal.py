"""Clients that announce a huge literal before logging in, then send it (hardening issue).

Usage: imap_preauth_literal.py HOST PORT tls|plain CA COUNT SIZE PID
Opens COUNT connections, on each sends `a LOGIN {SIZE+}` and then up to SIZE bytes in 256 KiB
chunks, stopping when the server has closed the connection; keeps every connection open,
reads the daemon's VmRSS (/proc/PID/status) while they are, then reads what each got.
Prints one JSON object: {"rss_kib": N, "replies": [first line of each], "sent": [bytes]}.
"""
import json
import socket
import ssl
import sys

host, port, mode, ca, count, size, pid = sys.argv[1:8]
port, count, size = int(port), int(count), int(size)
ctx = ssl.create_default_context(cafile=ca) if mode == "tls" else None


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def connect():
    s = socket.create_connection((host, port), timeout=10)
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="mail.example.test")
    f = s.makefile("rb")
    greeting = f.readline()
    assert greeting.startswith(b"* OK"), greeting
    return s, f


conns = []
chunk = b"x" * (256 * 1024)
for _ in range(count):
    s, f = connect()
    s.settimeout(2)
    sent = 0
    try:
        s.sendall(b"a LOGIN {%d+}\r\n" % size)
        while sent < size:
            n = min(len(chunk), size - sent)
            s.sendall(chunk[:n])
            sent += n
    except (OSError, ssl.SSLError):
        pass  # the server closed the connection: what we meant to find out
    conns.append((s, f, sent))

during = rss_kib()
replies = []
for s, f, _ in conns:
    try:
        s.settimeout(10)
        replies.append(f.readline().decode(errors="replace").strip())
    except (OSError, ssl.SSLError) as e:
        replies.append("error: %s" % e)
    s.close()
print(json.dumps({"rss_kib": during, "replies": replies, "sent": [c[2] for c in conns]}))
