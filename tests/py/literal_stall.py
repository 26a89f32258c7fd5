#!/usr/bin/env python3
"""Times N synchronizing literals from clients that leave Nagle on (the default socket):
imaplib APPENDs over IMAPS, POP3 is line-only, and SMTP clients that write the final
"." of DATA (or a BDAT chunk) in a second small write. With a server whose kernel delays the
ACK of the literal, each one waits ~40 ms for the delayed-ACK timer (issue: the 40 ms stall).

usage: literal_stall.py imap HOST PORT CA USER PASSWORD N
       literal_stall.py smtp|bdat HOST PORT N RCPT
prints {"seconds": S, "n": N, "each_ms": M}
"""
import imaplib
import json
import socket
import ssl
import sys
import time


def imap(host, port, ca, user, password, n):
    ctx = ssl.create_default_context(cafile=ca)
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
    m.login(user, password)
    msg = b"From: a@example.test\r\nSubject: stall\r\n\r\n" + b"x" * 4000 + b"\r\n"
    m.append("INBOX", None, None, msg)  # warm up
    start = time.monotonic()
    for _ in range(n):
        typ, _ = m.append("INBOX", None, None, msg)
        assert typ == "OK", typ
    took = time.monotonic() - start
    m.logout()
    return took


def smtp(host, port, n, rcpt, bdat):
    s = socket.create_connection((host, int(port)))
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line or line[3:4] != b"-":
                return line

    reply()
    s.sendall(b"EHLO stall.test\r\n")
    reply()
    body = b"Subject: stall\r\n\r\n" + b"x" * 4000 + b"\r\n"
    start = None
    for i in range(n + 1):
        if i == 1:
            start = time.monotonic()
        s.sendall(b"MAIL FROM:<a@remote.test>\r\n")
        assert reply().startswith(b"250")
        s.sendall(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
        assert reply().startswith(b"250")
        if bdat:
            # Two chunks, each command and its data in separate writes.
            s.sendall(b"BDAT %d\r\n" % len(body))
            s.sendall(body)
            assert reply().startswith(b"250")
            s.sendall(b"BDAT 2 LAST\r\n")
            s.sendall(b"\r\n")
        else:
            s.sendall(b"DATA\r\n")
            assert reply().startswith(b"354")
            # The body, then the end of data in a write of its own, as many clients do.
            s.sendall(body)
            s.sendall(b".\r\n")
        r = reply()
        assert r.startswith(b"250"), r
    took = time.monotonic() - start
    s.sendall(b"QUIT\r\n")
    reply()
    return took


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "imap":
        host, port, ca, user, password, n = sys.argv[2:8]
        took = imap(host, port, ca, user, password, int(n))
    else:
        host, port, n, rcpt = sys.argv[2:6]
        took = smtp(host, port, int(n), rcpt, kind == "bdat")
    n = int(n)
    print(json.dumps({"seconds": took, "n": n, "each_ms": took * 1000 / n}))
