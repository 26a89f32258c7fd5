#!/usr/bin/env python3
"""Load driver for bench/imap.sh (posthaste vs Dovecot IMAP). Python 3 standard library only.

  imap_load.py gen DIR COUNT                 write COUNT messages into the Maildir DIR (cur/)
  imap_load.py single HOST PORT CA USER PW   timed commands on one connection -> JSON
  imap_load.py mixed HOST PORT CA PREFIX PW CLIENTS SECONDS
                                             CLIENTS processes, user PREFIX<i>, mixed commands
  imap_load.py idle HOST PORT CA USER PW COUNT [SRC_IPS]
                                             COUNT logged-in connections with INBOX selected
                                             (NOSELECT=1: only logged in); prints "ready N",
                                             waits for a line on stdin, then NOOPs each

Every connection is implicit TLS (the certificate is not verified: the same self-signed
certificate on both servers). The client is a small hand-written IMAP reader (lines and
{n} literals), not imaplib, so that the client's own parsing costs little and the same for
both servers (responses are scanned in bulk, literals skipped by length); its CPU time is
reported next to every figure.
"""
import json
import os
import random
import socket
import ssl
import sys
import time

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


class Imap:
    def __init__(self, host, port, src=None):
        # A timeout, so that a server that stops accepting (e.g. out of descriptors) makes
        # the client report failures instead of hanging in the TLS handshake.
        raw = socket.create_connection((host, port), timeout=30, source_address=(src, 0) if src else None)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = CTX.wrap_socket(raw)
        # Received bytes and the read position in them: slicing the front off a bytes buffer
        # per line would copy the rest every time (quadratic in a 10,000-line FETCH, and
        # worse for a server that sends bigger TLS records).
        self.buf = bytearray()
        self.pos = 0
        self.tagn = 0
        self.readline()  # greeting

    def _more(self):
        """More bytes, without moving what is buffered (positions into it stay valid)."""
        chunk = self.sock.recv(262144)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def readline(self):
        """One line (the greeting, a continuation request); `cmd` drops what was read."""
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return line
            self._more()

    def cmd(self, text, literal=None):
        """Sends one command; returns (status line, number of untagged responses, bytes)."""
        self.tagn += 1
        tag = b"a%d" % self.tagn
        if literal is not None:
            self.sock.sendall(tag + b" " + text + b" {%d}\r\n" % len(literal))
            line = self.readline()
            if not line.startswith(b"+"):
                raise RuntimeError("no continuation: %r" % line)
            self.sock.sendall(literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text + b"\r\n")
        # The response is scanned in bulk (C-speed searches), not line by line: a 10,000-line
        # FETCH cost the Python client more than either server took to send it, and
        # the ratio then measured the client. The tagged line is the first line starting
        # with the tag that is not inside a literal; literals are skipped by their length.
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        after = b"\r\n" + tag + b" "
        buf = self.buf
        scan = 0  # everything before is read past (lines, skipped literals)
        # Next candidate positions, each searched once per byte: the tagged line (its CRLF
        # before it) and the end of a literal announcement `{n}\r\n`; -1 = none in
        # buf[:upto].
        t, t_upto, b, b_upto = -1, 0, -1, 0
        at = -1
        while at < 0:
            if scan == 0 and buf.startswith(tag + b" "):
                at = 0
                break
            if t < scan and (t >= 0 or len(buf) > t_upto):
                t = buf.find(after, max(scan, t_upto - len(after)))
                t_upto = len(buf)
            if b < scan and (b >= 0 or len(buf) > b_upto):
                b = buf.find(b"}\r\n", max(scan, b_upto - 3))
                b_upto = len(buf)
            if b >= 0 and (t < 0 or b < t):
                open_ = buf.rfind(b"{", scan, b)
                digits = buf[open_ + 1 : b] if open_ >= 0 else b""
                scan = b + 3
                if digits.isdigit():
                    scan += int(digits)
                    while len(buf) < scan:
                        self._more()
                continue
            if t >= 0:
                at = t + 2
                break
            self._more()
        eol = buf.find(b"\r\n", at)
        while eol < 0:
            self._more()
            eol = buf.find(b"\r\n", at)
        line = bytes(self.buf[at:eol])
        self.pos = eol + 2
        if not line.startswith(tag + b" OK"):
            raise RuntimeError("%s -> %s" % (text[:80], line[:200]))
        untagged = self.buf.count(b"\r\n* ", 0, at) + (1 if self.buf.startswith(b"* ") else 0)
        head = bytes(self.buf[: min(at, 1 << 20)]).split(b"\r\n", 4)[:4]
        lines = [h for h in head if h.startswith(b"* ")]
        return line, untagged, eol + 2, lines

    def login(self, user, pw):
        return self.cmd(b"LOGIN " + quote(user) + b" " + quote(pw))


def quote(s):
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ---- the mailbox --------------------------------------------------------------------------

WORDS = (
    "invoice meeting report budget travel project update weekly lunch release review "
    "contract offer order shipping payment reminder agenda minutes draft proposal "
    "server backup holiday photos newsletter question answer ticket support urgent"
).split()
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
DOMAINS = ["example.org", "example.net", "remote.test", "corp.example"]


def message(i, rnd):
    sender = "%s.%d@%s" % (rnd.choice(NAMES), rnd.randrange(20), rnd.choice(DOMAINS))
    subject = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(2, 7))) + " #%d" % i
    ts = 1700000000 + i * 3600 + rnd.randrange(3600)  # one message an hour, in order
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))
    head = (
        "Return-Path: <%s>\r\nReceived: from mx.remote.test (mx.remote.test [192.0.2.1])\r\n"
        "\tby mail.bench.test with ESMTPS id %08X; %s\r\nFrom: %s\r\nTo: u@bench.test\r\n"
        "Subject: %s\r\nDate: %s\r\nMessage-ID: <%d.%d@bench.test>\r\nMIME-Version: 1.0\r\n"
    ) % (sender, i, date, sender, subject, date, i, ts)
    para = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(40, 400)))
    lines = []
    while para:
        lines.append(para[:72])
        para = para[72:]
    text = "\r\n".join(lines) + "\r\n"
    if i % 5 == 0:  # every fifth: multipart/mixed with an alternative part and an attachment
        att = "\r\n".join("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2" for _ in range(20))
        body = (
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            'Content-Type: multipart/alternative; boundary="b2"\r\n\r\n--b2\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n%s--b2\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n<p>%s</p>\r\n--b2--\r\n--b1\r\n"
            'Content-Type: application/octet-stream; name="report-%d.bin"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="report-%d.bin"\r\n\r\n%s\r\n--b1--\r\n'
        ) % (text, text[:200], i, i, att)
    else:
        body = "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
    return (head + body).encode(), ts


def gen(directory, count):
    rnd = random.Random(42)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    for i in range(1, count + 1):
        data, ts = message(i, rnd)
        flags = ""
        if rnd.random() < 0.1:
            flags += "F"
        if rnd.random() < 0.7:
            flags += "S"
        # Dovecot's file name form: time.M<usec>P<pid>.host,S=size,W=vsize:2,flags
        name = "%d.M%dP%d.bench,S=%d,W=%d:2,%s" % (ts, i, 1000 + i, len(data), len(data), flags)
        path = os.path.join(directory, "cur", name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (ts, ts))


# ---- timed commands on one connection -----------------------------------------------------

SINGLE = [
    ("SELECT INBOX", b"SELECT INBOX"),
    ("FETCH 1:* (FLAGS UID RFC822.SIZE)", b"FETCH 1:* (FLAGS UID RFC822.SIZE)"),
    (
        "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)])",
        b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)])",
    ),
    ("FETCH 1:* BODYSTRUCTURE", b"FETCH 1:* BODYSTRUCTURE"),
    ("FETCH 1:* ENVELOPE", b"FETCH 1:* ENVELOPE"),
    ("SEARCH SUBJECT invoice", b"SEARCH SUBJECT invoice"),
    ("SEARCH FROM alice", b"SEARCH FROM alice"),
    ("SEARCH UNSEEN", b"SEARCH UNSEEN"),
    ("SEARCH SINCE 1-Jan-2024", b"SEARCH SINCE 1-Jan-2024"),
    ("SEARCH BODY holiday", b"SEARCH BODY holiday"),
]


def single(host, port, user, pw, repeat):
    c = Imap(host, port)
    c.login(user, pw)
    # Warm-up: the first SELECT builds the server's index (timed on its own), and one pass of
    # each command brings the files into the page cache for both servers alike.
    # The index build is timed on every copy of the mailbox (folders first1..firstN, then
    # INBOX): one sample alone moved by ±50 % between runs on this shared machine.
    builds = []
    for folder in ["first%d" % i for i in range(1, int(os.environ.get("FIRSTS", "0")) + 1)] + ["INBOX"]:
        t0 = time.perf_counter()
        c.cmd(b"SELECT " + folder.encode())
        builds.append(time.perf_counter() - t0)
    first_select = min(builds)
    for _, command in SINGLE:
        if command:
            c.cmd(command)
    results = {"first SELECT (index build), best of %d folders" % len(builds): {"seconds": first_select, "all": builds}}
    for name, command in SINGLE:
        if command is None:
            continue
        best = None
        cpu = None
        for _ in range(repeat):
            p0, t0 = time.process_time(), time.perf_counter()
            line, untagged, nbytes, _ = c.cmd(command)
            dt = time.perf_counter() - t0
            if best is None or dt < best:
                best, cpu = dt, time.process_time() - p0
                info = (untagged, nbytes)
        results[name] = {"seconds": best, "client_cpu": cpu, "responses": info[0], "bytes": info[1]}
    c.cmd(b"LOGOUT")
    print(json.dumps(results))


# ---- mixed load from several clients ------------------------------------------------------


def mixed_worker(host, port, user, pw, seconds, seed, out):
    rnd = random.Random(seed)
    counts = {}
    errors = 0
    end = time.monotonic() + seconds
    appended = 0

    def run(c, name, text, literal=None):
        c.cmd(text, literal)
        counts[name] = counts.get(name, 0) + 1

    while time.monotonic() < end:
        try:
            c = Imap(host, port)
            counts["connect"] = counts.get("connect", 0) + 1
            run(c, "LOGIN", b"LOGIN " + quote(user) + b" " + quote(pw))
            _, _, _, lines = c.cmd(b"SELECT INBOX")
            counts["SELECT"] = counts.get("SELECT", 0) + 1
            exists = 0
            for l in lines:
                if l.endswith(b" EXISTS"):
                    exists = int(l.split()[1])
            if exists == 0:
                _, _, _, _ = c.cmd(b"NOOP")
            for _ in range(5):
                lo = rnd.randrange(1, max(exists - 50, 1) + 1)
                hi = min(lo + 49, max(exists, 1))
                run(c, "FETCH headers", b"FETCH %d:%d (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From Subject Date)])" % (lo, hi))
                n = rnd.randrange(1, max(exists, 1) + 1)
                run(c, "FETCH body", b"FETCH %d (BODY.PEEK[])" % n)
                run(c, "STORE", b"STORE %d +FLAGS.SILENT (\\Seen)" % n)
            run(c, "SEARCH", b"SEARCH UNSEEN")
            msg, _ = message(100000 + seed * 1000 + appended, rnd)
            appended += 1
            run(c, "APPEND", b"APPEND INBOX (\\Seen)", msg)
            run(c, "NOOP", b"NOOP")
            # Delete the newest message (the one just appended) and expunge it: the mailbox
            # keeps its size over the run.
            _, _, _, lines = c.cmd(b"SEARCH ALL")
            counts["SEARCH"] = counts.get("SEARCH", 0) + 1
            last = [l for l in lines if l.startswith(b"* SEARCH")]
            seqs = last[0].split()[2:] if last else []
            if seqs:
                run(c, "STORE", b"STORE %s +FLAGS.SILENT (\\Deleted)" % seqs[-1])
                run(c, "EXPUNGE", b"EXPUNGE")
            run(c, "LOGOUT", b"LOGOUT")
            c.sock.close()
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors += 1
            if errors < 3:
                sys.stderr.write("%s: %s\n" % (user, e))
    out.put((counts, errors))


def mixed(host, port, prefix, pw, clients, seconds):
    import multiprocessing as mp

    q = mp.Queue()
    procs = [
        mp.Process(target=mixed_worker, args=(host, port, "%s%d@bench.test" % (prefix, i), pw, seconds, i, q))
        for i in range(1, clients + 1)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    totals, errors = {}, 0
    for _ in procs:
        counts, e = q.get()
        errors += e
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    commands = sum(v for k, v in totals.items() if k != "connect")
    print(json.dumps({"seconds": wall, "commands": commands, "per_second": commands / wall,
                      "sessions": totals.get("connect", 0), "errors": errors, "counts": totals}))


# ---- idle connections ---------------------------------------------------------------------


def idle(host, port, user, pw, count, srcs):
    conns = []
    failed = 0
    t0 = time.perf_counter()
    for i in range(count):
        try:
            c = Imap(host, port, srcs[i % len(srcs)] if srcs else None)
            c.login(user, pw)
            if not os.environ.get("NOSELECT"):
                c.cmd(b"SELECT INBOX")
            conns.append(c)
        except Exception as e:  # noqa: BLE001
            failed += 1
            if failed <= 3:
                sys.stderr.write("connection %d: %s\n" % (i, e))
            if failed > 50:
                break
    print("ready %d failed %d seconds %.1f" % (len(conns), failed, time.perf_counter() - t0), flush=True)
    sys.stdin.readline()
    # Are they all still there? A NOOP on each.
    alive = 0
    for c in conns:
        try:
            c.cmd(b"NOOP")
            alive += 1
        except Exception:  # noqa: BLE001
            pass
    print("alive %d" % alive, flush=True)


def append_worker(host, port, user, pw, n, nodelay, folder, out):
    """imaplib, as scripts and migration tools use it: APPEND with a synchronizing literal
    (imaplib waits for "+"), over a socket with Nagle on unless `nodelay`."""
    import imaplib

    m = imaplib.IMAP4_SSL(host, port, ssl_context=CTX)
    if nodelay:
        m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    m.login(user, pw)
    rnd = random.Random(n)
    msgs = [message(200000 + i, rnd)[0] for i in range(n)]
    t0 = time.perf_counter()
    for msg in msgs:
        typ, _ = m.append(folder, None, None, msg)
        if typ != "OK":
            raise RuntimeError("APPEND: %s" % typ)
    out.put(time.perf_counter() - t0)
    m.logout()


def append(host, port, user, pw, conns, n, nodelay):
    """CONNS connections each APPEND N ~4-12 KB messages to a folder of their own; prints
    {"per_second": …} over the whole run (wall clock from the first to the last)."""
    import imaplib
    import multiprocessing

    m = imaplib.IMAP4_SSL(host, port, ssl_context=CTX)
    m.login(user, pw)
    folders = ["append%d_%d" % (int(nodelay), i) for i in range(conns)]
    for f in folders:
        m.create(f)
    m.logout()
    q = multiprocessing.Queue()
    t0 = time.perf_counter()
    procs = [multiprocessing.Process(target=append_worker, args=(host, port, user, pw, n, nodelay, f, q)) for f in folders]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    if q.qsize() != conns:
        sys.exit("append: a worker failed")
    print(json.dumps({"per_second": conns * n / wall, "connections": conns, "each": n, "nodelay": nodelay}))


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "gen":
        gen(a[1], int(a[2]))
    elif a[0] == "single":
        single(a[1], int(a[2]), a[4], a[5], int(os.environ.get("REPEAT", "5")))
    elif a[0] == "mixed":
        mixed(a[1], int(a[2]), a[4], a[5], int(a[6]), float(a[7]))
    elif a[0] == "append":
        append(a[1], int(a[2]), a[4], a[5], int(a[6]), int(a[7]), a[8] == "1")
    elif a[0] == "idle":
        srcs = a[7].split(",") if len(a) > 7 and a[7] else []
        idle(a[1], int(a[2]), a[4], a[5], int(a[6]), srcs)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
