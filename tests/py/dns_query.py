#!/usr/bin/env python3
"""Ask one DNS server one question over UDP and print the answer as JSON.

Hand-built on purpose: the test machines have no dig/host (bind9-dnsutils) and no
dnspython, and the harness must check its own DNS server (dnsmasq) with a client that does
not share code with posthaste's resolver.

usage: dns_query.py SERVER_IP PORT NAME TYPE      (TYPE: A, MX, TXT, PTR, AAAA, CNAME)
prints {"rcode": 0, "answers": [{"name":…, "type":"MX", "ttl":…, "data":…}, …]}
  A/AAAA data: the address; MX: {"preference": 10, "exchange": "mx.remote.test"};
  TXT: the strings joined (as SPF/DKIM readers do); PTR/CNAME: the target name.
"""
import ipaddress
import json
import os
import socket
import struct
import sys

TYPES = {"A": 1, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
NAMES = {v: k for k, v in TYPES.items()}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def read_name(msg, off):
    """Return (name, offset after the name) following compression pointers (RFC 1035 §4.1.4)."""
    labels, jumped, end = [], False, off
    for _ in range(128):  # a bound against pointer loops in a malformed reply
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumped = True
            continue
        if n == 0:
            if not jumped:
                end = off + 1
            return ".".join(labels), end
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    raise ValueError("name compression loop")


def main():
    if len(sys.argv) != 5 or sys.argv[4].upper() not in TYPES:
        sys.exit(__doc__)
    server, port, name, qtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], TYPES[sys.argv[4].upper()]
    qid = int.from_bytes(os.urandom(2), "big")
    # RD set: dnsmasq answers its own records either way; a recursive server would need it.
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", qtype, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(query, (server, port))
    while True:
        msg, _ = sock.recvfrom(65535)
        if msg[:2] == query[:2]:
            break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        rname, off = read_name(msg, off)
        rtype, _, ttl, rdlen = struct.unpack(">HHIH", msg[off : off + 10])
        off += 10
        rdata = msg[off : off + rdlen]
        if rtype == 1:
            data = str(ipaddress.IPv4Address(rdata))
        elif rtype == 28:
            data = str(ipaddress.IPv6Address(rdata))
        elif rtype == 15:
            data = {"preference": struct.unpack(">H", rdata[:2])[0], "exchange": read_name(msg, off + 2)[0]}
        elif rtype == 16:
            parts, i = [], 0
            while i < len(rdata):
                parts.append(rdata[i + 1 : i + 1 + rdata[i]].decode("utf-8", "replace"))
                i += 1 + rdata[i]
            data = "".join(parts)
        elif rtype in (5, 12):
            data = read_name(msg, off)[0]
        else:
            data = rdata.hex()
        answers.append({"name": rname, "type": NAMES.get(rtype, str(rtype)), "ttl": ttl, "data": data})
        off += rdlen
    print(json.dumps({"rcode": flags & 0xF, "answers": answers}))


if __name__ == "__main__":
    main()
