#!/usr/bin/env python3
"""The 40 ms delayed-ACK stall, measured so that machine load cancels out: two clients of
the same kind, one with the default socket (Nagle on, as nearly every client runs) and one
with TCP_NODELAY, take turns for N rounds; each operation is timed on its own and the
medians are compared. A server whose kernel delays the ACK of a literal (or of a DATA body,
or a BDAT command) adds ~40 ms to every default-socket operation and nothing to the other.

  literal_stall.py imap HOST PORT CA USER PASSWORD N   # imaplib APPEND (synchronizing literal)
  literal_stall.py smtp|bdat HOST PORT N RCPT          # DATA with the final "." in its own
                                                       # write / BDAT command and chunk apart
prints {"default_ms": median, "nodelay_ms": median, "n": N}
"""
import imaplib
import json
import socket
import ssl
import statistics
import sys
import time

MSG = b"From: a@example.test\r\nSubject: stall\r\n\r\n" + b"x" * 4000 + b"\r\n"


class ImapClient:
    def __init__(self, host, port, ca, user, password, nodelay):
        ctx = ssl.create_default_context(cafile=ca)
        self.m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
        if nodelay:
            self.m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.m.login(user, password)

    def op(self):
        typ, _ = self.m.append("INBOX", None, None, MSG)
        assert typ == "OK", typ


class SmtpClient:
    def __init__(self, host, port, rcpt, nodelay, bdat):
        self.s = socket.create_connection((host, int(port)))
        if nodelay:
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
        self.rcpt = rcpt.encode()
        self.bdat = bdat
        self.reply()
        self.s.sendall(b"EHLO stall.test\r\n")
        self.reply()

    def reply(self):
        while True:
            line = self.f.readline()
            if not line or line[3:4] != b"-":
                return line

    def op(self):
        s = self.s
        s.sendall(b"MAIL FROM:<a@remote.test>\r\n")
        assert self.reply().startswith(b"250")
        s.sendall(b"RCPT TO:<" + self.rcpt + b">\r\n")
        assert self.reply().startswith(b"250")
        if self.bdat:
            s.sendall(b"BDAT %d\r\n" % len(MSG))
            s.sendall(MSG)
            assert self.reply().startswith(b"250")
            s.sendall(b"BDAT 2 LAST\r\n")
            s.sendall(b"\r\n")
        else:
            s.sendall(b"DATA\r\n")
            assert self.reply().startswith(b"354")
            s.sendall(MSG)
            s.sendall(b".\r\n")
        r = self.reply()
        assert r.startswith(b"250"), r


def main():
    kind = sys.argv[1]
    if kind == "imap":
        host, port, ca, user, password, n = sys.argv[2:8]
        make = lambda nd: ImapClient(host, port, ca, user, password, nd)  # noqa: E731
    else:
        host, port, n, rcpt = sys.argv[2:6]
        make = lambda nd: SmtpClient(host, port, rcpt, nd, kind == "bdat")  # noqa: E731
    n = int(n)
    clients = {False: make(False), True: make(True)}
    for c in clients.values():
        c.op()  # warm up
    times = {False: [], True: []}
    for _ in range(n):
        for nd in (False, True):
            t = time.monotonic()
            clients[nd].op()
            times[nd].append((time.monotonic() - t) * 1000)
    print(json.dumps({
        "default_ms": statistics.median(times[False]),
        "nodelay_ms": statistics.median(times[True]),
        "n": n,
    }))


if __name__ == "__main__":
    main()
