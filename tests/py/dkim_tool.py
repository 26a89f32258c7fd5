#!/usr/bin/python3
"""DKIM signing and verification with dkimpy (Debian: python3-dkim), an implementation
independent of posthaste's, for tests/mailauth.rs. Run with Debian's /usr/bin/python3.

usage:
  dkim_tool.py verify DNS_IP DNS_PORT MESSAGE_FILE
      Verifies every DKIM-Signature of the message, fetching keys from the DNS server
      given (dnsmasq in the tests), and prints
      {"signatures": [{"d": …, "s": …, "a": …, "ok": true|false, "error": null|"…"}, …]}
  dkim_tool.py sign KEY_PEM DOMAIN SELECTOR MESSAGE_FILE
      Prints the message with an rsa-sha256 relaxed/relaxed DKIM-Signature prepended.
"""
import json
import os
import re
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dns_query  # noqa: E402  (the harness's own DNS client: encode_name, read_name)

try:
    import dkim
except ImportError:
    sys.exit("dkimpy is missing: apt-get install python3-dkim (and run this with /usr/bin/python3)")


def txt_lookup(server, port, name, timeout=3):
    """The TXT strings of `name`, joined (RFC 6376 §3.6.2.2), or None."""
    if isinstance(name, bytes):
        name = name.decode()
    qid = int.from_bytes(os.urandom(2), "big")
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + dns_query.encode_name(name) + struct.pack(">HH", 16, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.sendto(query, (server, port))
    while True:
        msg, _ = sock.recvfrom(65535)
        if msg[:2] == query[:2]:
            break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = dns_query.read_name(msg, off)
        off += 4
    for _ in range(an):
        _, off = dns_query.read_name(msg, off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[off : off + 10])
        off += 10
        rdata = msg[off : off + rdlen]
        off += rdlen
        if rtype == 16:
            parts, i = [], 0
            while i < len(rdata):
                parts.append(rdata[i + 1 : i + 1 + rdata[i]])
                i += 1 + rdata[i]
            return b"".join(parts)
    return None


def verify(server, port, path):
    with open(path, "rb") as f:
        message = f.read()
    d = dkim.DKIM(message)
    headers = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    dnsfunc = lambda name, timeout=5: txt_lookup(server, port, name)  # noqa: E731
    out = []
    for idx, value in enumerate(headers):
        tags = dict(
            (k.strip(), v.strip())
            for k, v in (t.split(b"=", 1) for t in re.sub(rb"\s+", b"", value).split(b";") if b"=" in t)
        )
        entry = {
            "d": tags.get(b"d", b"").decode(),
            "s": tags.get(b"s", b"").decode(),
            "a": tags.get(b"a", b"").decode(),
            "h": tags.get(b"h", b"").decode(),
            "ok": False,
            "error": None,
        }
        try:
            entry["ok"] = bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
        except Exception as e:  # a broken signature or key is a result here
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    print(json.dumps({"signatures": out}))


def sign(key_path, domain, selector, path):
    with open(path, "rb") as f:
        message = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    sig = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    sys.stdout.buffer.write(sig + message)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "verify":
        verify(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 6 and sys.argv[1] == "sign":
        sign(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
