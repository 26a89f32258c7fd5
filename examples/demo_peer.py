#!/usr/bin/env python3
"""A stand-in for "the rest of the Internet" in the demo: a tiny DNS server that says the
mail for remote.example goes to mx.remote.example = 127.0.0.2, and a tiny SMTP receiver on
127.0.0.2 that writes every message it gets into a directory.

usage: demo_peer.py DNS_PORT SMTP_PORT OUT_DIR

Only for examples/demo.sh: loopback only, no TLS, accepts anything for remote.example.
"""
import os
import socket
import socketserver
import struct
import sys
import threading
import time

DNS_PORT, SMTP_PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
DOMAIN, MX, MX_IP = "remote.example", "mx.remote.example", "127.0.0.2"


def encode_name(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def decode_name(data, pos):
    labels = []
    while data[pos]:
        n = data[pos]
        labels.append(data[pos + 1:pos + 1 + n].decode())
        pos += n + 1
    return ".".join(labels).lower(), pos + 1


def dns_answer(query):
    """RFC 1035 §4.1: echo the question, answer MX for the domain and A for its MX."""
    qid, _flags, qd = struct.unpack(">HHH", query[:6])
    name, end = decode_name(query, 12)
    qtype, _qclass = struct.unpack(">HH", query[end:end + 4])
    question = query[12:end + 4]
    answers = []
    if name == DOMAIN and qtype == 15:  # MX
        rdata = struct.pack(">H", 10) + encode_name(MX)
        answers.append(encode_name(name) + struct.pack(">HHIH", 15, 1, 60, len(rdata)) + rdata)
    elif name == MX and qtype == 1:  # A
        answers.append(encode_name(name) + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(MX_IP))
    known = name in (DOMAIN, MX)
    rcode = 0 if known else 3  # NXDOMAIN for everything else
    header = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    return header + question + b"".join(answers)


def serve_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", DNS_PORT))
    while True:
        data, peer = s.recvfrom(512)
        try:
            s.sendto(dns_answer(data), peer)
        except Exception as e:  # a malformed query: no answer
            print("dns:", e, file=sys.stderr)


class Smtp(socketserver.StreamRequestHandler):
    def handle(self):
        def reply(line):
            self.wfile.write((line + "\r\n").encode())
        reply("220 mx.remote.example demo receiver")
        rcpts, data = [], None
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                reply("250 mx.remote.example")
            elif verb == "MAIL":
                rcpts = []
                reply("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:].strip("<> "))
                reply("250 2.1.5 ok")
            elif verb == "DATA":
                reply("354 go ahead")
                data = b""
                while True:
                    l = self.rfile.readline()
                    if l in (b".\r\n", b""):
                        break
                    data += l[1:] if l.startswith(b"..") else l
                name = os.path.join(OUT, "%d-%s.eml" % (time.time_ns(), rcpts[0] if rcpts else "x"))
                with open(name, "wb") as f:
                    f.write(data)
                reply("250 2.0.0 stored")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("250 ok")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    threading.Thread(target=serve_dns, daemon=True).start()
    Server((MX_IP, SMTP_PORT), Smtp).serve_forever()
