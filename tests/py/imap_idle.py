"""IDLE push: idle on INBOX, deliver a message through the MX with smtplib, and measure
how long after the 250 the untagged EXISTS arrives.

Usage: imap_idle.py HOST PORT_993 CA USER PASSWORD SMTP_PORT
Prints JSON {"exists": line, "delay": seconds}.
"""
import imaplib
import json
import smtplib
import ssl
import sys
import time

host, p993, ca, user, password, smtp_port = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
m = imaplib.IMAP4_SSL(host, int(p993), ssl_context=ctx)
m.login(user, password)
m.select("INBOX")
tag = m._new_tag()
m.send(tag + b" IDLE\r\n")
cont = m.readline()
assert cont.startswith(b"+"), cont
with smtplib.SMTP(host, int(smtp_port)) as s:
    s.sendmail("sender@remote.test", [user], b"Subject: push\r\n\r\nhello\r\n")
t0 = time.monotonic()
m.sock.settimeout(10)
line = m.readline()
delay = time.monotonic() - t0
m.send(b"DONE\r\n")
done = m.readline()
print(json.dumps({"exists": line.decode().strip(), "delay": delay, "done": done.decode().strip()}))
