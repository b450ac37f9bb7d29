#!/usr/bin/env python3
"""A filter for tests, speaking protocol 0.7 on stdin/stdout.

argv[1] = mode (comma list): reject-mail, junk-mail, rewrite-rcpt, report-mail,
disconnect-helo, data-upper, data-header, crash-mail, sleep-mail, garbage-mail,
bad-register, smtp-out (also registers every smtp-out report); argv[2] = a file
where every received line is recorded.
"""

import os
import sys
import time

modes = set(sys.argv[1].split(","))
record = open(sys.argv[2], "a", buffering=1) if len(sys.argv) > 2 else None


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    line = line.rstrip("\n")
    if record:
        record.write(line + "\n")
    if line == "config|ready":
        break
if "bad-register" in modes:
    out("register|filter|smtp-in|no-such-phase")
    out("register|ready")
    sys.exit(0)
out("register|report|smtp-in|*")
if "smtp-out" in modes:
    out("register|report|smtp-out|*")
for phase in ("mail-from", "rcpt-to", "helo", "ehlo", "commit"):
    out(f"register|filter|smtp-in|{phase}")
if modes & {"data-upper", "data-header"}:
    out("register|filter|smtp-in|data-line")
out("register|ready")

header_done = False
for line in sys.stdin:
    line = line.rstrip("\n")
    if record:
        record.write(line + "\n")
    f = line.split("|")
    if f[0] != "filter":
        continue
    phase, sid, token = f[4], f[5], f[6]
    param = "|".join(f[7:])
    if phase == "data-line":
        if "data-header" in modes and not header_done:
            out(f"filter-dataline|{sid}|{token}|X-Filtered: yes")
            header_done = True
        if param == ".":
            header_done = False
        text = param.upper() if "data-upper" in modes and param != "." else param
        out(f"filter-dataline|{sid}|{token}|{text}")
        continue
    if phase == "mail-from" and "crash-mail" in modes:
        os._exit(3)
    if phase == "mail-from" and "sleep-mail" in modes:
        time.sleep(3600)
    if phase == "mail-from" and "garbage-mail" in modes:
        out("this is not the protocol")
        continue
    if phase == "mail-from" and "reject-mail" in modes and "spam" in param:
        out(f"filter-result|{sid}|{token}|reject|550 5.7.1 no spam here")
    elif phase == "mail-from" and "reject-mail" in modes and "plain" in param:
        out(f"filter-result|{sid}|{token}|reject|550 no plain mail here")
    elif phase == "mail-from" and "reject-mail" in modes and "later" in param:
        out(f"filter-result|{sid}|{token}|reject|451 4.7.1 not now")
    elif phase == "mail-from" and "junk-mail" in modes:
        out(f"filter-result|{sid}|{token}|junk")
    elif phase == "mail-from" and "report-mail" in modes:
        out(f"filter-result|{sid}|{token}|report|saw {param}")
    elif phase == "rcpt-to" and "rewrite-rcpt" in modes and param.startswith("old@"):
        out(f"filter-result|{sid}|{token}|rewrite|new@{param.split('@', 1)[1]}")
    elif phase in ("helo", "ehlo") and "disconnect-helo" in modes and param == "evil":
        out(f"filter-result|{sid}|{token}|disconnect|421 4.7.0 go away")
    else:
        out(f"filter-result|{sid}|{token}|proceed")
