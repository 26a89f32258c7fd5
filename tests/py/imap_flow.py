"""The core mail-client flow against posthaste with Python's imaplib (verified TLS).

Usage: imap_flow.py HOST PORT_993 PORT_143 CA USER PASSWORD
Prints one JSON object with what each step saw; the Rust test asserts on it.
"""
import imaplib
import json
import ssl
import sys

host, p993, p143, ca, user, password = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
out = {}

m = imaplib.IMAP4_SSL(host, int(p993), ssl_context=ctx)
out["caps"] = sorted(m.capabilities)
out["login"] = m.login(user, password)[0]
typ, folders = m.list()
out["list"] = [f.decode() for f in folders]
typ, data = m.select("INBOX")
out["exists"] = int(data[0])
typ, data = m.uid("SEARCH", None, "ALL")
uids = data[0].split()
out["uids"] = [u.decode() for u in uids]
uid = uids[0]
typ, data = m.uid("FETCH", uid, "(RFC822 FLAGS)")
out["message"] = data[0][1].decode(errors="replace")
typ, data = m.uid("FETCH", uid, "(FLAGS)")
out["flags_after_fetch"] = data[0].decode()
typ, data = m.uid("STORE", uid, "+FLAGS", "(\\Flagged)")
out["store"] = typ
typ, data = m.uid("COPY", uid, "Junk")
out["copy"] = typ
out["copy_resp"] = [x.decode() for x in m.untagged_responses.get("COPYUID", [])]
typ, data = m.uid("MOVE", uid, "Trash")
out["move"] = typ
typ, data = m.select("INBOX")
out["exists_after_move"] = int(data[0])
typ, data = m.select("Junk")
out["junk_exists"] = int(data[0])
m.store("1", "+FLAGS", "(\\Deleted)")
typ, data = m.expunge()
out["expunge"] = [d.decode() for d in data if d]
typ, data = m.status("Junk", "(MESSAGES)")
out["junk_status"] = data[0].decode()
m.logout()

m = imaplib.IMAP4(host, int(p143))
out["plain_caps"] = sorted(m.capabilities)
m.starttls(ssl_context=ctx)
out["tls_login"] = m.login(user, password)[0]
msg = b"From: " + user.encode() + b"\r\nTo: someone@example.test\r\nSubject: appended\r\n\r\nsent copy\r\n"
typ, data = m.append("Sent", "(\\Seen)", None, msg)
out["append"] = typ
out["append_resp"] = data[0].decode()
typ, data = m.select("Sent")
typ, data = m.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
out["sent"] = data[0][1].decode()
m.logout()
print(json.dumps(out))
