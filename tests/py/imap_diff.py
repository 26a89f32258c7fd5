"""Differential IMAP harness: the same scripted sessions against posthaste and Dovecot.

Usage: imap_diff.py [--list] CONFIG.json
CONFIG: {"servers": {"posthaste": {"host", "port", "tls", "ca"}, "dovecot": {...}},
         "accounts": {scenario: user}, "password", "scenarios": ["name", ...] or "all",
         "seeds": [int, ...], "random_steps": int, "allow": [rule, ...]}
`--list` prints the names of the scenarios CONFIG runs (each needs an account).
A rule: {"id", "rfc", "why", "server": "posthaste"|"dovecot", "command": regex (matched
against the command sent, tag removed), "find": regex, "replace": text}. Each rule rewrites
the normalised response lines of that server for matching commands (a line rewritten to ""
is dropped); after the rules both servers' answers must be equal.

Prints one JSON report: {"steps": N, "differences": [...], "used": {rule id: count}}.

Each scenario runs on both servers in turn, in an account of its own whose Maildir the test
seeded and copied identically for both servers, with fresh connections; within a scenario, sessions ("a", "b", ...) are separate
connections and commands run one at a time in script order, so untagged updates caused by
one session show up in the other's next answer on both servers alike.

Normalisation (what may differ without meaning anything): tags are ours and the same on
both; the text after OK/NO/BAD/BYE (and after a response code) is dropped; capability
lists, ID answers and MODSEQ values are replaced by placeholders (the two servers number
mod-sequences differently, both within RFC 7162; our own tests pin posthaste's MODSEQ
rules); UIDVALIDITY values become UV1, UV2, ... in order of appearance; strings are
compared by content whether sent quoted or as a literal (long ones by length and hash);
FETCH items, flags, LIST attributes and STATUS items are compared as sets (their order
carries no meaning, RFC 3501 §7.4.2, §7.2.2, §7.2.4).
"""
import hashlib
import json
import random
import re
import socket
import ssl
import sys

# ---------------------------------------------------------------------------------------
# A raw IMAP client: sends exactly what the script says, returns every response line with
# its literals inlined.


class Conn:
    def __init__(self, server):
        # Every answer here comes at once: a server that stays silent for 5 s is waiting
        # for something the script will not send, and the connection is given up.
        s = socket.create_connection((server["host"], int(server["port"])), timeout=5)
        if server.get("tls"):
            ctx = ssl.create_default_context(cafile=server["ca"])
            s = ctx.wrap_socket(s, server_hostname="mail.example.test")
        self.sock = s
        self.buf = b""
        self.closed = False
        self.greeting = self.read_response()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise EOFError
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read_response(self):
        """One response line with its literals: bytes (literal markers kept)."""
        out = b""
        while True:
            line = self._line()
            out += line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if not m:
                return out[:-2]
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += self.buf[:n]
            self.buf = self.buf[n:]

    def command(self, tag, text):
        """Send `tag text`, answering continuation requests of synchronizing literals;
        returns the response lines up to the tagged one (or to the close)."""
        lines = []
        data = (tag + " " + text).encode() if isinstance(text, str) else tag.encode() + b" " + text
        parts = re.split(rb"(\{\d+\}\r\n)", data)
        try:
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    self.sock.sendall(part)
                    continue
                self.sock.sendall(part)
                # A synchronizing literal: wait for "+" (or a refusal).
                while True:
                    line = self.read_response()
                    if line.startswith(b"+"):
                        break
                    lines.append(line)
                    if line.startswith(tag.encode() + b" "):
                        return lines
            # The command line ends after its last literal too.
            self.sock.sendall(b"\r\n")
            while True:
                line = self.read_response()
                if line.startswith(b"+ "):
                    # A continuation the script did not expect (AUTHENTICATE, IDLE): end it.
                    lines.append(b"+")
                    self.sock.sendall(b"*\r\n" if b"AUTHENTICATE" in data.upper() else b"DONE\r\n")
                    continue
                lines.append(line)
                if line.startswith(tag.encode() + b" "):
                    return lines
        except socket.timeout:
            lines.append(b"<timeout>")
            self.closed = True
            return lines
        except (EOFError, OSError, ssl.SSLError):
            lines.append(b"<closed>")
            return lines

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Tokenizer and normalisation.

# IMAP_DIFF_TRACE=FILE: every command and raw answer, both servers, appended to FILE.
TRACE = __import__("os").environ.get("IMAP_DIFF_TRACE")


def tokenize(data):
    """IMAP response data into a nested list: atoms (str), strings (('s', bytes)), lists."""
    pos = 0
    stack = [[]]
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c == b" ":
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            if len(stack) > 1:
                done = stack.pop()
                stack[-1].append(done)
            pos += 1
        elif c == b'"':
            pos += 1
            s = b""
            while pos < n and data[pos:pos + 1] != b'"':
                if data[pos:pos + 1] == b"\\":
                    pos += 1
                s += data[pos:pos + 1]
                pos += 1
            pos += 1
            stack[-1].append(("s", s))
        elif c in (b"{", b"~") and re.match(rb"~?\{(\d+)\+?\}\r\n", data[pos:]):
            m = re.match(rb"~?\{(\d+)\+?\}\r\n", data[pos:])
            start = pos + m.end()
            size = int(m.group(1))
            stack[-1].append(("s", data[start:start + size]))
            pos = start + size
        else:
            start = pos
            depth = 0
            while pos < n:
                ch = data[pos:pos + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in (b" ", b"(", b")"):
                    break
                pos += 1
            stack[-1].append(data[start:pos].decode(errors="replace"))
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def render(tok):
    if isinstance(tok, list):
        return "(" + " ".join(render(t) for t in tok) + ")"
    if isinstance(tok, tuple):
        s = tok[1]
        if len(s) > 120:
            return '"<%d bytes %s>"' % (len(s), hashlib.sha256(s).hexdigest()[:12])
        return json.dumps(s.decode(errors="replace"))
    return tok


class Names:
    """Per-server symbolic names for values that only have to be consistent (UIDVALIDITY)."""

    def __init__(self):
        self.map = {}

    def uv(self, v):
        if v not in self.map:
            self.map[v] = "UV%d" % (len(self.map) + 1)
        return self.map[v]


def norm_code(code, names):
    """A response code's inside, normalised."""
    words = code.split(" ")
    key = words[0].upper()
    if key == "CAPABILITY":
        return "CAPABILITY"
    if key in ("UIDVALIDITY",) and len(words) > 1:
        return "UIDVALIDITY " + names.uv(words[1])
    if key in ("APPENDUID", "COPYUID") and len(words) > 1:
        return " ".join([key, names.uv(words[1])] + words[2:])
    if key in ("HIGHESTMODSEQ",):
        return "HIGHESTMODSEQ MS"
    if key in ("PERMANENTFLAGS",):
        inner = code[len(words[0]):].strip()
        return "PERMANENTFLAGS " + sort_flags(inner)
    if key == "MODIFIED":
        return code
    return code


def sort_flags(text):
    m = re.match(r"^\((.*)\)$", text.strip())
    if not m:
        return text
    return "(" + " ".join(sorted(m.group(1).split(), key=str.lower)) + ")"


def norm_fetch_items(items, names):
    pairs = []
    i = 0
    while i + 1 < len(items) or i < len(items):
        name = items[i] if isinstance(items[i], str) else render(items[i])
        val = items[i + 1] if i + 1 < len(items) else None
        i += 2
        key = name.upper()
        if key == "FLAGS" and isinstance(val, list):
            v = "(" + " ".join(sorted((render(x) for x in val), key=str.lower)) + ")"
        elif key == "MODSEQ":
            v = "(MS)"
        elif key in ("BODY", "BODYSTRUCTURE") and isinstance(val, list):
            v = render(fold_body(val))
        else:
            v = render(val) if val is not None else ""
        pairs.append(key + " " + v)
    return "(" + " ".join(sorted(pairs)) + ")"


def fold_body(part):
    """BODY/BODYSTRUCTURE with the tokens MIME makes case-insensitive (type, subtype,
    parameter names, transfer encoding, disposition type: RFC 2045 §5.1, §6.1, RFC 2183 §2)
    in lower case; everything else (parameter values such as boundaries) as sent."""
    low = lambda t: ("s", t[1].lower()) if isinstance(t, tuple) else t
    def params(p):
        if not isinstance(p, list):
            return p
        return [low(x) if i % 2 == 0 else x for i, x in enumerate(p)]
    def disp(d):
        if isinstance(d, list) and d:
            return [low(d[0])] + [params(x) for x in d[1:]]
        return d
    part = list(part)
    if part and isinstance(part[0], list):
        n = 0
        while n < len(part) and isinstance(part[n], list):
            part[n] = fold_body(part[n])
            n += 1
        if n < len(part):
            part[n] = low(part[n])
        if n + 1 < len(part):
            part[n + 1] = params(part[n + 1])
        if n + 2 < len(part):
            part[n + 2] = disp(part[n + 2])
        return part
    if len(part) >= 6:
        part[0], part[1] = low(part[0]), low(part[1])
        part[2] = params(part[2])
        part[5] = low(part[5])
        is_msg = part[0] == ("s", b"message") and part[1] == ("s", b"rfc822")
        if is_msg and len(part) > 8 and isinstance(part[8], list):
            part[8] = fold_body(part[8])
        # The disposition of a single part: after MD5, at 9 (text: 10, message: 11).
        at = 11 if is_msg else (10 if part[0] == ("s", b"text") else 9)
        if at < len(part):
            part[at] = disp(part[at])
    return part


def normalise(line, names):
    """One response line (bytes) into its comparable form (str)."""
    if line in (b"<closed>", b"<timeout>"):
        return line.decode()
    if line.startswith(b"+"):
        return "+"
    m = re.match(rb"^(\S+) (OK|NO|BAD|BYE|PREAUTH)(?: \[([^\]]*)\])?", line, re.I)
    if m:
        tag = m.group(1).decode()
        status = m.group(2).decode().upper()
        code = m.group(3)
        if tag == "*" and status == "OK" and code is None:
            return "* OK"
        out = "%s %s" % (tag, status)
        if code is not None:
            out += " [%s]" % norm_code(code.decode(errors="replace"), names)
        return out
    if not line.startswith(b"* "):
        return line.decode(errors="replace")
    toks = tokenize(line[2:])
    if not toks:
        return "*"
    first = toks[0] if isinstance(toks[0], str) else ""
    up = first.upper()
    if up == "CAPABILITY":
        return "* CAPABILITY"
    if up == "ID":
        return "* ID"
    if up == "ENABLED":
        return " ".join(["* ENABLED"] + sorted(t.upper() for t in toks[1:] if isinstance(t, str)))
    if up in ("FLAGS",) and len(toks) > 1 and isinstance(toks[1], list):
        return "* FLAGS (" + " ".join(sorted((render(x) for x in toks[1]), key=str.lower)) + ")"
    if up in ("LIST", "LSUB") and len(toks) >= 4 and isinstance(toks[1], list):
        # \Marked and \Unmarked are optional hints (RFC 3501 §7.2.2): not compared.
        attrs = " ".join(sorted((render(x) for x in toks[1] if render(x).lower() not in ("\\marked", "\\unmarked")),
                                key=str.lower))
        name = toks[3]
        if isinstance(name, str) and name.upper() != "NIL":
            name = ("s", name.encode())
        rest = " ".join(render(t) for t in toks[4:])
        return ("* %s (%s) %s %s %s" % (up, attrs, render(toks[2]), render(name), rest)).rstrip()
    if up == "STATUS" and len(toks) >= 3:
        name = toks[1]
        if isinstance(name, str):
            name = ("s", name.encode())
        items = toks[2] if isinstance(toks[2], list) else []
        pairs = []
        for i in range(0, len(items) - 1, 2):
            k, v = items[i].upper(), render(items[i + 1])
            if k == "UIDVALIDITY":
                v = names.uv(v)
            elif k == "HIGHESTMODSEQ":
                v = "MS"
            pairs.append(k + " " + v)
        return "* STATUS %s (%s)" % (render(name), " ".join(sorted(pairs)))
    if up == "SEARCH":
        nums = [t for t in toks[1:] if isinstance(t, str)]
        mod = [t for t in toks[1:] if isinstance(t, list)]
        return "* SEARCH" + "".join(" " + n for n in nums) + (" (MODSEQ MS)" if mod else "")
    if len(toks) >= 3 and isinstance(toks[1], str) and toks[1].upper() == "FETCH" and isinstance(toks[2], list):
        return "* %s FETCH %s" % (first, norm_fetch_items(toks[2], names))
    return "* " + " ".join(render(t) for t in toks)


# ---------------------------------------------------------------------------------------
# Scenarios: lists of (session, command). Commands are plain text; `{n+}`/`{n}` literals
# are written out in full by the helpers.

DATE = '"14-Jul-2023 02:44:25 +0200"'


def message(subject, body="hello", extra=""):
    return ("From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: %s\r\n"
            "Date: Fri, 14 Jul 2023 02:44:25 +0200\r\nMessage-ID: <%s@example.test>\r\n%s\r\n%s\r\n"
            % (subject, re.sub(r"\W", "", subject) or "x", extra, body))


MULTI = ("From: Ann <ann@example.test>\r\nTo: <@route.example:joe@example.test>, grp: a@example.test, b@example.test;\r\n"
         "Subject: =?utf-8?q?multi_part?=\r\nDate: Sat, 15 Jul 2023 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
         "Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\npreamble\r\n--xx\r\n"
         "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
         "gr=C3=BC=C3=9Fe\r\n--xx\r\nContent-Type: multipart/alternative; boundary=yy\r\n\r\n--yy\r\n"
         "Content-Type: text/plain\r\n\r\nplain\r\n--yy\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--yy--\r\n"
         "--xx\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"inner.eml\"\r\n\r\n"
         "From: x@example.test\r\nSubject: inner\r\n\r\ninner body\r\n--xx\r\n"
         "Content-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         "AAECAwQ=\r\n--xx--\r\nepilogue\r\n")


def append(folder, msg, flags="", date=DATE, sync=False):
    data = msg.encode()
    lit = "{%d}" % len(data) if sync else "{%d+}" % len(data)
    flags = (" (%s)" % flags) if flags is not None else ""
    return "APPEND %s%s %s %s\r\n%s" % (folder, flags, date, lit, msg)


def sc_select_and_fetch():
    s = [("a", "SELECT INBOX")]
    for items in ["(UID FLAGS)", "(INTERNALDATE RFC822.SIZE)", "(ENVELOPE)", "(BODYSTRUCTURE)", "(BODY)",
                  "(BODY.PEEK[HEADER])", "(BODY.PEEK[TEXT])", "(BODY.PEEK[])", "(BODY.PEEK[1])",
                  "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])", "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])",
                  "(BODY.PEEK[]<0.10>)", "(BODY.PEEK[]<5.1000000>)", "ALL", "FAST", "FULL", "(RFC822.HEADER)",
                  "(RFC822.SIZE UID)", "(BODY.PEEK[1.MIME])", "(BODY.PEEK[2])", "(BODY.PEEK[2.2.1])",
                  "(BODY.PEEK[3.HEADER])", "(BODY.PEEK[3.TEXT])", "(BODY.PEEK[3.1])", "(BODY.PEEK[9])"]:
        s.append(("a", "FETCH 1:* " + items))
    s += [("a", "UID FETCH 1:* (FLAGS)"), ("a", "UID FETCH 2:4 (UID)"), ("a", "UID FETCH 100:* (UID)"),
          ("a", "FETCH * (UID)"), ("a", "FETCH 99 (UID)"), ("a", "FETCH 1 (NOSUCH)"),
          ("a", "FETCH 1 (BODY[TEXT])"), ("a", "FETCH 1 (FLAGS)"), ("a", "FETCH 1:2 RFC822"),
          ("a", "FETCH 2 (FLAGS)"), ("a", "CHECK"), ("a", "NOOP"), ("a", "CLOSE"), ("a", "FETCH 1 (UID)")]
    return s


def sc_store_expunge():
    s = [("a", "SELECT INBOX")]
    s += [("a", "STORE 1 +FLAGS (\\Flagged)"), ("a", "STORE 1 -FLAGS (\\Flagged)"),
          ("a", "STORE 2 FLAGS (\\Seen \\Answered)"), ("a", "STORE 2:3 +FLAGS.SILENT (\\Draft)"),
          ("a", "STORE 1:* +FLAGS ($Work)"), ("a", "STORE 1 +FLAGS (\\Recent)"), ("a", "STORE 1 +FLAGS (\\Bogus)"),
          ("a", "UID STORE 3 +FLAGS (\\Deleted)"), ("a", "FETCH 1:* (FLAGS)"), ("a", "EXPUNGE"),
          ("a", "FETCH 1:* (UID FLAGS)"), ("a", "STORE 1 -FLAGS ($Work)"), ("a", "STORE 2 +FLAGS (\\Deleted)"),
          ("a", "UID EXPUNGE 1:100"), ("a", "FETCH 1:* (UID)"), ("a", "STORE 1 FLAGS ()"),
          ("a", "EXAMINE INBOX"), ("a", "STORE 1 +FLAGS (\\Seen)"), ("a", "EXPUNGE"), ("a", "FETCH 1 (FLAGS)")]
    return s


def sc_search():
    s = [("a", "SELECT INBOX"), ("a", "STORE 1 +FLAGS (\\Seen)"), ("a", "STORE 2 +FLAGS (\\Flagged $Work)")]
    for key in ["ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "KEYWORD $Work", "UNKEYWORD $Work", "NEW", "OLD",
                "RECENT", "ANSWERED", "DELETED", "UNDELETED", "DRAFT", "SUBJECT multi", "SUBJECT hello",
                "FROM bob", "TO alice", "CC nobody", "BODY html", "TEXT inner", "TEXT grüße", "HEADER Message-ID x",
                "LARGER 100", "SMALLER 500", "BEFORE 1-Jan-2024", "SINCE 1-Jan-2020", "ON 14-Jul-2023",
                "SENTBEFORE 15-Jul-2023", "SENTSINCE 15-Jul-2023", "SENTON 14-Jul-2023", "UID 2:3", "1:2",
                "NOT SEEN", "OR SEEN FLAGGED", "OR (SEEN) (NOT FLAGGED)", "(SEEN FLAGGED)", "*", "UID *",
                "CHARSET UTF-8 TEXT grüße", "CHARSET KOI8-R TEXT x", "NOSUCHKEY", "MODSEQ 1", "99"]:
        s.append(("a", "SEARCH " + key))
    s += [("a", "UID SEARCH ALL"), ("a", "UID SEARCH SEEN"), ("a", "UID SEARCH UID 1:*")]
    return s


def sc_mailboxes():
    return [("a", "LIST \"\" \"*\""), ("a", "LIST \"\" \"%\""), ("a", "LIST \"\" \"\""), ("a", "LIST \"\" INBOX"),
            ("a", "LIST \"\" inbox"), ("a", "LSUB \"\" \"*\""), ("a", "CREATE box"), ("a", "CREATE box"),
            ("a", "CREATE box/sub"), ("a", "CREATE box/sub/deep"), ("a", "CREATE INBOX"), ("a", "LIST \"\" \"box*\""),
            ("a", "LIST \"box/\" \"%\""), ("a", "LIST \"\" \"box/%\""), ("a", "SUBSCRIBE box/sub/deep"),
            ("a", "SUBSCRIBE nosuch"), ("a", "LSUB \"\" \"box/%\""), ("a", "LSUB \"\" \"%\""),
            ("a", "LSUB \"\" \"box/*\""), ("a", "STATUS box (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"),
            ("a", "STATUS nosuch (MESSAGES)"), ("a", "STATUS INBOX (MESSAGES UNSEEN)"),
            ("a", "RENAME box/sub box2"), ("a", "LIST \"\" \"*\""), ("a", "RENAME nosuch x"),
            ("a", "RENAME box2 box"), ("a", "DELETE box"),
            ("a", "LIST \"\" \"*\""), ("a", "LSUB \"\" \"*\""), ("a", "UNSUBSCRIBE box2/deep"),
            ("a", "DELETE box2/deep"), ("a", "DELETE box2"), ("a", "DELETE INBOX"), ("a", "DELETE nosuch"),
            ("a", "CREATE \"Entw&APw-rfe\""), ("a", "LIST \"\" \"Entw*\""), ("a", "SELECT \"Entw&APw-rfe\""),
            ("a", "CREATE \"a.b\""), ("a", "NAMESPACE"), ("a", "SELECT nosuch"), ("a", "EXAMINE Sent"),
            ("a", "UNSELECT"), ("a", "UNSELECT")]


def sc_implicit_parents():
    # CREATE of a name whose superior levels do not exist (RFC 3501 §6.3.3).
    # Last, RENAME onto INBOX (which Dovecot lets a \\Noselect level do).
    return [("a", "CREATE x/y/z"), ("a", "LIST \"\" \"x*\""), ("a", "SELECT x/y/z"), ("a", "LIST \"\" \"x/%\""),
            ("a", "RENAME x/y INBOX")]


def sc_append_copy_move():
    return [("a", append("Drafts", message("draft one"), "\\Draft")),
            ("a", append("Drafts", message("draft two"), "\\Seen $Later", sync=True)),
            ("a", append("nosuch", message("x"))), ("a", "STATUS Drafts (MESSAGES RECENT UIDNEXT)"),
            ("a", "EXAMINE Drafts"), ("a", "FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"),
            ("a", "SELECT Drafts"), ("a", append("Drafts", message("draft three"), None)),
            ("a", "COPY 1:2 Trash"), ("a", "COPY 1 nosuch"), ("a", "UID COPY 3 Trash"), ("a", "MOVE 1 Archive"),
            ("a", "UID MOVE 3 Archive"), ("a", "FETCH 1:* (UID FLAGS)"), ("a", "STATUS Trash (MESSAGES)"),
            ("a", "SELECT Archive"), ("a", "FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
            ("a", "COPY 1:* Archive"), ("a", "MOVE 1 Archive"), ("a", "FETCH 1:* (UID)")]


def sc_two_sessions():
    return [("a", "SELECT INBOX"), ("b", "SELECT INBOX"), ("a", "STORE 1 +FLAGS (\\Flagged)"), ("b", "NOOP"),
            ("b", append("INBOX", message("from b"))), ("a", "NOOP"), ("a", "FETCH 1:* (UID FLAGS)"),
            ("b", "STORE 1 +FLAGS (\\Deleted)"), ("b", "EXPUNGE"), ("a", "FETCH 1 (UID)"), ("a", "NOOP"),
            ("a", "FETCH 1:* (UID)"), ("b", "CREATE shared"), ("a", "LIST \"\" shared"), ("b", "SELECT shared"),
            ("a", append("shared", message("into shared"))), ("b", "NOOP"), ("b", "FETCH 1 (FLAGS)"),
            ("a", "DELETE shared"), ("b", "NOOP"), ("a", "STATUS INBOX (MESSAGES RECENT)")]


def sc_delete_create_rename():
    s = []
    for round in range(2):
        s += [("a", "CREATE box"), ("a", "SELECT box"), ("a", append("box", message("r%d one" % round))),
              ("a", append("box", MULTI)), ("a", "FETCH 1:* (UID FLAGS BODYSTRUCTURE)"), ("a", "SEARCH ALL"),
              ("a", "STATUS box (MESSAGES UIDNEXT RECENT)"), ("a", "CHECK"), ("a", "SELECT INBOX"),
              ("a", "DELETE box")]
    s += [("a", "CREATE b"), ("a", append("b", message("in b"))), ("a", "CREATE c"),
          ("a", append("c", message("in c one"))), ("a", append("c", message("in c two"))),
          ("a", "STATUS b (MESSAGES UIDNEXT)"), ("a", "DELETE b"), ("a", "RENAME c b"),
          ("a", "STATUS b (MESSAGES UIDNEXT)"), ("a", "SELECT b"), ("a", "FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
          ("a", append("b", message("after rename"))), ("a", "SEARCH ALL"), ("a", "CREATE c"), ("a", "SELECT c"),
          ("a", "LIST \"\" \"*\""), ("a", "RENAME INBOX oldinbox")]
    return s


def sc_recent_modseq():
    return [("a", "CREATE r"), ("a", append("r", message("m1"))), ("a", append("r", message("m2"))),
            ("a", "STATUS r (RECENT MESSAGES)"), ("a", "EXAMINE r"), ("a", "FETCH 1:* (FLAGS)"),
            ("a", "STATUS r (RECENT)"), ("a", "SELECT r"), ("b", "STATUS r (RECENT)"), ("b", "SELECT r"),
            ("a", append("r", message("m3"))), ("a", "FETCH 1:* (FLAGS)"), ("a", "ENABLE CONDSTORE"),
            ("a", "SELECT r"), ("a", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)"), ("a", "STORE 1 +FLAGS (\\Seen)"),
            ("a", "SEARCH MODSEQ 1"), ("a", "CREATE e"), ("a", "SELECT e (CONDSTORE)"),
            ("a", append("e", message("first"))), ("a", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)"),
            ("a", "STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)"), ("a", "UID FETCH 1:* (FLAGS MODSEQ)")]


def sc_auth_and_errors():
    # Sessions x and y are never logged in (Dovecot closes one after its third invalid
    # command before login: two each here).
    return [("x", "CAPABILITY"), ("x", "NOOP"), ("x", "SELECT INBOX"), ("x", "LOGIN alice@example.test wrong"),
            ("x", "ID (\"name\" \"diff\")"), ("x", "LOGOUT"), ("y", "FOO"), ("y", ""), ("y", "LOGOUT"),
            ("a", "ID NIL"), ("a", "LOGIN x y"), ("a", "FETCH 1 (UID)"), ("a", "SELECT"), ("a", "EXPUNGE"),
            ("a", "CHECK"), ("a", "ENABLE NOSUCH"), ("a", "GETQUOTAROOT INBOX"), ("a", "LOGOUT")]


SCENARIOS = {
    "select_and_fetch": sc_select_and_fetch,
    "store_expunge": sc_store_expunge,
    "search": sc_search,
    "mailboxes": sc_mailboxes,
    "implicit_parents": sc_implicit_parents,
    "append_copy_move": sc_append_copy_move,
    "two_sessions": sc_two_sessions,
    "delete_create_rename": sc_delete_create_rename,
    "recent_modseq": sc_recent_modseq,
    "auth_and_errors": sc_auth_and_errors,
}

# ---------------------------------------------------------------------------------------
# Random sessions from a seed: commands chosen without looking at answers, so both servers
# get exactly the same sequence.

FOLDERS = ["INBOX", "Trash", "Archive", "r1", "r2", "nosuch"]
FLAT = ["r1", "r2", "r3"]
FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "\\Draft", "$Work", "Junk"]
SETS = ["1", "2", "1:3", "1:*", "*", "2:*", "3,1", "1:2,4", "4:2"]
ITEMS = ["FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[HEADER]",
         "BODY.PEEK[TEXT]<0.20>", "BODY.PEEK[1]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
KEYS = ["ALL", "SEEN", "UNSEEN", "FLAGGED", "DELETED", "KEYWORD $Work", "SUBJECT one", "TEXT hello", "LARGER 300",
        "NOT SEEN", "OR SEEN DELETED", "UID 1:3", "2:*", "SINCE 1-Jan-2023", "NEW", "RECENT"]


def random_scenario(seed, steps):
    """Commands picked from a seed. A session that takes over first says NOOP, so both
    servers have told it of the other session's changes before its command (when an
    unsolicited update comes is each server's choice, RFC 3501 §7); mailboxes are created,
    deleted and renamed flat (implicit parents differ by design: the scripted scenario
    "implicit_parents" has them), and opened with SELECT (EXAMINE and its read-only
    refusals are scripted too)."""
    rnd = random.Random(seed)
    out = []
    n = 0
    last = None
    for _ in range(steps):
        s = rnd.choice("aab")
        if s != last and last is not None:
            out.append((s, "NOOP"))
        last = s
        k = rnd.random()
        if k < 0.12:
            out.append((s, "SELECT %s" % rnd.choice(FOLDERS)))
        elif k < 0.27:
            items = " ".join(rnd.sample(ITEMS, rnd.randint(1, 3)))
            out.append((s, "%sFETCH %s (%s)" % (rnd.choice(["", "UID "]), rnd.choice(SETS), items)))
        elif k < 0.39:
            flags = " ".join(rnd.sample(FLAGS, rnd.randint(1, 2)))
            op = rnd.choice(["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT"])
            out.append((s, "%sSTORE %s %s (%s)" % (rnd.choice(["", "UID "]), rnd.choice(SETS), op, flags)))
        elif k < 0.49:
            out.append((s, "%sSEARCH %s" % (rnd.choice(["", "UID "]), rnd.choice(KEYS))))
        elif k < 0.60:
            n += 1
            body = "hello %d" % n + (" x" * rnd.randint(0, 200))
            flags = rnd.choice(["", "\\Seen", "\\Flagged $Work"])
            out.append((s, append(rnd.choice(FOLDERS[:5]), message("one %d" % n, body), flags, sync=rnd.random() < 0.3)))
        elif k < 0.66:
            out.append((s, "%s %s %s" % (rnd.choice(["COPY", "MOVE", "UID COPY", "UID MOVE"]), rnd.choice(SETS),
                                         rnd.choice(FOLDERS))))
        elif k < 0.71:
            out.append((s, rnd.choice(["EXPUNGE", "CLOSE", "CHECK", "UNSELECT", "UID EXPUNGE 1:5"])))
        elif k < 0.78:
            out.append((s, rnd.choice(["NOOP", "NOOP", "STATUS %s (MESSAGES RECENT UIDNEXT UNSEEN)" % rnd.choice(FOLDERS)])))
        elif k < 0.86:
            f = rnd.choice(FLAT)
            out.append((s, rnd.choice(["CREATE %s" % f, "DELETE %s" % f, "RENAME %s %s" % (f, rnd.choice(FLAT))])))
        elif k < 0.92:
            out.append((s, rnd.choice(['LIST "" "*"', 'LIST "" "%"', 'LSUB "" "*"', "SUBSCRIBE %s" % rnd.choice(FOLDERS),
                                       "UNSUBSCRIBE %s" % rnd.choice(FOLDERS)])))
        else:
            out.append((s, "FETCH %s (FLAGS)" % rnd.choice(SETS)))
    return out


# ---------------------------------------------------------------------------------------


def run(server, user, password, steps):
    """Run one scenario on one server: the normalised answer of each step."""
    conns = {}
    names = Names()
    answers = []
    for i, (session, text) in enumerate(steps):
        if session not in conns:
            c = Conn(server)
            if session not in ("x", "y"):
                r = c.command("L", "LOGIN %s \"%s\"" % (user, password))
                assert r and r[-1].startswith(b"L OK"), (server, r)
            conns[session] = c
        c = conns[session]
        if c.closed:
            answers.append(["<closed>"])
            continue
        tag = "t%d" % (i + 1)
        lines = c.command(tag, text)
        if TRACE:
            open(TRACE, "a").write("%s %s> %s\n%s\n" % (server["port"], session, text[:200],
                                                  "\n".join(l.decode(errors="replace")[:300] for l in lines)))
        norm = [normalise(l, names) for l in lines]
        # FLAGS and PERMANENTFLAGS renumber nothing: where in an answer they come carries no
        # meaning (RFC 3501 §7.2.6), so they are compared at its start.
        flags = [l for l in norm if l.startswith(("* FLAGS ", "* OK [PERMANENTFLAGS "))]
        norm = flags + [l for l in norm if not l.startswith(("* FLAGS ", "* OK [PERMANENTFLAGS "))]
        # LIST and LSUB answers come in no defined order (RFC 3501 §6.3.8): compare as sets.
        listed = sorted(l for l in norm if l.startswith(("* LIST ", "* LSUB ")))
        if listed:
            rest = iter(listed)
            norm = [next(rest) if l.startswith(("* LIST ", "* LSUB ")) else l for l in norm]
        answers.append(norm)
    for c in conns.values():
        c.close()
    return answers


def warm_up(server, user, password):
    """Let the server index the seeded INBOX before the scenario (not compared): Dovecot
    gives UIDs to messages it finds only when it first opens a mailbox, and an APPEND to an
    INBOX it has not opened would get UID 1, before the older messages (RFC 3501 §2.3.1.1
    wants UIDs in the order of arrival; posthaste always indexes first). STATUS opens the
    mailbox without selecting it or taking \\Recent."""
    c = Conn(server)
    c.command("W1", "LOGIN %s \"%s\"" % (user, password))
    c.command("W2", "STATUS INBOX (UIDNEXT)")
    c.command("W3", "LOGOUT")
    c.close()


def apply_rules(rules, server, command, lines, used):
    """The rewrite rules of `server` for `command` applied to each line; a rule with
    "when" applies only to answers with a line matching it."""
    out = []
    for line in lines:
        for r in rules:
            if r.get("server") != server or not re.search(r["command"], command):
                continue
            if r.get("when") and not any(re.search(r["when"], l) for l in lines):
                continue
            new = re.sub(r["find"], r["replace"], line)
            if new != line:
                used[r["id"]] = used.get(r["id"], 0) + 1
                line = new
        if line != "":
            out.append(line)
    return out


def work_list(cfg):
    names = list(SCENARIOS) if cfg["scenarios"] == "all" else cfg["scenarios"]
    work = [(n, SCENARIOS[n]()) for n in names]
    for seed in cfg.get("seeds", []):
        work.append(("random-%d" % seed, random_scenario(seed, cfg.get("random_steps", 60))))
    return work


def main():
    cfg = json.load(open(sys.argv[-1]))
    work = work_list(cfg)
    if sys.argv[1] == "--list":
        # The scenarios this configuration runs, one account each (the test makes them).
        print(json.dumps([n for n, _ in work]))
        return
    rules = cfg.get("allow", [])
    used = {r["id"]: 0 for r in rules}
    diffs = []
    total = 0
    for name, steps in work:
        # Every scenario has its own account, seeded alike on both servers, so scenarios
        # cannot disturb one another.
        user = cfg["accounts"][name]
        for sname in ("posthaste", "dovecot"):
            warm_up(cfg["servers"][sname], user, cfg["password"])
        results = {s: run(cfg["servers"][s], user, cfg["password"], steps) for s in ("posthaste", "dovecot")}
        for i, (session, text) in enumerate(steps):
            total += 1
            cmd = text.split("\r\n")[0]
            p = apply_rules(rules, "posthaste", cmd, results["posthaste"][i], used)
            d = apply_rules(rules, "dovecot", cmd, results["dovecot"][i], used)
            if p != d:
                # A pair rule: both whole answers as they are, each matching its pattern.
                pair = [r for r in rules if r.get("server") == "both" and re.search(r["command"], cmd)
                        and re.fullmatch(r["posthaste"], "\n".join(p), re.S)
                        and re.fullmatch(r["dovecot"], "\n".join(d), re.S)]
                if pair:
                    used[pair[0]["id"]] += 1
                    continue
                diffs.append({"scenario": name, "step": i + 1, "session": session, "command": cmd,
                              "posthaste": p, "dovecot": d})
    print(json.dumps({"steps": total, "differences": diffs, "used": used}))


if __name__ == "__main__":
    main()
