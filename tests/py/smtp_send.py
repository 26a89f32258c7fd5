#!/usr/bin/env python3
"""Send one message over SMTP with Python's smtplib and print every server reply as JSON.

An independent client (not posthaste's code, not swaks) for submission and MX tests.
Rejections are results, not errors: the script exits 0 whenever it could talk to the
server, and the test asserts on the reply codes.

usage: smtp_send.py --host H --port P [--mode plain|starttls|ssl] [--cafile CA]
                    [--tls-name NAME] [--user U --password PW] [--helo NAME]
                    --from ADDR --to ADDR [--to ADDR…] [--data-file F | --body TEXT]
                    [--subject S]

prints {"steps": [{"step": "connect", "code": 220, "text": "…"}, {"step": "ehlo", …},
        {"step": "starttls", …}, {"step": "auth", …}, {"step": "mail", …},
        {"step": "rcpt", "arg": "b@x", …}, {"step": "data", …}, {"step": "quit", …}],
        "tls": {"version": "TLSv1.3", "cipher": "…"} | null, "error": null | "…"}
A step that was not reached is absent. DATA is sent only if some RCPT was accepted.
"""
import argparse
import email.utils
import json
import re
import smtplib
import socket
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["plain", "starttls", "ssl"], default="plain")
    ap.add_argument("--cafile")
    ap.add_argument("--tls-name", help="name to verify in the certificate (default: --host)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--helo", default="client.remote.test")
    ap.add_argument("--from", dest="mail_from", required=True)
    ap.add_argument("--to", action="append", required=True)
    ap.add_argument("--data-file")
    ap.add_argument("--body", default="Hello from smtp_send.py.\n")
    ap.add_argument("--subject", default="smtp_send.py test")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()

    steps = []
    result = {"steps": steps, "tls": None, "error": None}

    def record(step, reply, arg=None):
        code, text = reply
        entry = {"step": step, "code": code, "text": text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)}
        if arg is not None:
            entry["arg"] = arg
        steps.append(entry)
        return code

    if a.data_file:
        with open(a.data_file, "rb") as f:
            data = f.read()
    else:
        data = (
            f"From: <{a.mail_from}>\r\nTo: {', '.join('<' + t + '>' for t in a.to)}\r\n"
            f"Subject: {a.subject}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='smtp-send.test')}\r\n\r\n{a.body}"
        ).encode()

    ctx = None
    if a.mode != "plain":
        # Verify for real when given a CA: TLS tests must fail on a wrong certificate.
        if a.cafile:
            ctx = ssl.create_default_context(cafile=a.cafile)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE

    s = None
    try:
        s = smtplib.SMTP(timeout=a.timeout)
        if a.mode == "ssl":
            # Implicit TLS (RFC 8314 §3.3). Wrapped by hand so the name verified can differ
            # from the address connected to (--tls-name with --host 127.0.0.1).
            raw = socket.create_connection((a.host, a.port), a.timeout)
            s.sock = ctx.wrap_socket(raw, server_hostname=a.tls_name or a.host)
            s.file = None
            record("connect", s.getreply())
        else:
            record("connect", s.connect(a.host, a.port))
        if record("ehlo", s.ehlo(a.helo)) != 250:
            raise SystemExit(finish(s, result))
        if a.mode == "starttls":
            code, text = s.docmd("STARTTLS")
            record("starttls", (code, text))
            if code != 220:
                raise SystemExit(finish(s, result))
            s.sock = ctx.wrap_socket(s.sock, server_hostname=a.tls_name or a.host)
            s.file = None
            # RFC 3207 §4.2: forget what was learned before TLS and greet again.
            s.helo_resp = s.ehlo_resp = None
            s.esmtp_features = {}
            s.does_esmtp = False
            if record("ehlo", s.ehlo(a.helo)) != 250:
                raise SystemExit(finish(s, result))
        if isinstance(s.sock, ssl.SSLSocket):
            result["tls"] = {"version": s.sock.version(), "cipher": s.sock.cipher()[0]}
        if a.user is not None:
            try:
                record("auth", s.login(a.user, a.password or ""))
            except smtplib.SMTPAuthenticationError as e:
                record("auth", (e.smtp_code, e.smtp_error))
                raise SystemExit(finish(s, result))
            except smtplib.SMTPNotSupportedError as e:
                result["error"] = f"AUTH not offered: {e}"
                raise SystemExit(finish(s, result))
        if record("mail", s.mail(a.mail_from)) != 250:
            raise SystemExit(finish(s, result))
        accepted = 0
        for rcpt in a.to:
            code = record("rcpt", s.rcpt(rcpt), arg=rcpt)
            accepted += code in (250, 251)
        if accepted:
            # DATA by hand (not smtplib.data) to record the 354 and the final reply apart.
            code, text = s.docmd("DATA")
            record("data", (code, text))
            if code == 354:
                # CRLF line ends and dot-stuffing (RFC 5321 §4.5.2), on bytes so 8-bit
                # messages pass unchanged.
                q = re.sub(rb"\r\n|\n|\r", b"\r\n", data)
                q = re.sub(rb"(?m)^\.", b"..", q)
                if not q.endswith(b"\r\n"):
                    q += b"\r\n"
                s.send(q + b".\r\n")
                record("dot", s.getreply())
        finish(s, result)
    except (OSError, smtplib.SMTPException) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result))


def finish(s, result):
    try:
        code, text = s.docmd("QUIT")
        result["steps"].append({"step": "quit", "code": code, "text": text.decode("utf-8", "replace")})
        s.close()
    except (OSError, smtplib.SMTPException) as e:
        result["error"] = result["error"] or f"{type(e).__name__}: {e}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    main()
