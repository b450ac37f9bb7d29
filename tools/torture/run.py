#!/usr/bin/env python3
"""Torture runner: every torture check against a real daemon, each part
bounded in time, and a table of attempts/failures per check.

    python3 tools/torture/run.py [--budget SECONDS] [--part NAME ...] [--long]

Parts: smuggling (bad end-of-data marks split anywhere, BDAT, early talkers,
bodies pipelined after a refused DATA), relay (open-relay battery with the
built-in configuration and every core/examples/*.conf), parsers
(coverage-guided fuzzing with atheris of the SMTP command machine, address
parser, dot-stuffing round trip, config parser and ``%{...}`` expansion;
hypothesis property tests when atheris is missing), load (5,000 concurrent
sessions with pony's RSS, slowloris, per-IP/recipient/message/error/command
caps, 50 MiB over max-message-size), disk (full then read-only tmpfs spool;
root only) and crash (tools/torture/crash.py: 5 rounds, 50 with --long).
``--budget`` is per part (default 120 s; 600 s with --long). The same
checks run in the normal suite with short budgets
(core/tests/e2e/test_e2e_torture_*.py). Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("mailrider") is None:
    # the daemon's children (run as _mailrider under root) import it too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "core" / "src"), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "core" / "src"))

import torture_util as tu  # noqa: E402
from harness import Daemon  # noqa: E402
from mailrider import limits  # noqa: E402

LIMITS_CONFIG = """listen on 127.0.0.1 port {port}
smtp max-message-size 5M
smtp limit max-rcpt 5 max-mails 3 sessions-per-local-address 50
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for local action "local"
"""
DISK_CONFIG = """listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for local action "local"
"""
OURS = {"lmtp-dovecot.conf": "example.org", "virtual-domains.conf": "example.org"}
FUZZ_TARGETS = ("command", "address", "dotstuff", "config", "format")


def part_smuggling(deadline: float, long: bool) -> list[tu.Tally]:
    with Daemon(extra_env={"MAILRIDER_GREETING_DELAY": "0.2"}) as d:
        rounds = 1000 if long else 200
        out = [tu.check_smuggling(d, d.state / "maildir", rounds,
                                  deadline - (deadline - time.monotonic()) / 3)]
        out.append(tu.check_bdat(d, d.state / "maildir"))
        rest = max(deadline - time.monotonic(), 5)
        out.append(tu.check_pregreet(d, 50, time.monotonic() + rest / 2))
        out.append(tu.check_pipelined_after_refused_data(d, 50, deadline))
        return out


def part_relay(deadline: float, long: bool) -> list[tu.Tally]:
    out = []
    for conf in [None, *sorted((ROOT / "core" / "examples").glob("*.conf"))]:
        if time.monotonic() > deadline:
            break
        tmp = Path(tempfile.mkdtemp(prefix="mailrider-relay-"))
        tmp.chmod(0o755)
        try:
            d = Daemon(tu.example_config(conf, tmp) if conf else None)
            tu.fix_users(tmp, d.user)
            with d:
                ours = OURS.get(conf.name, "localhost") if conf else "localhost"
                out.append(tu.check_relay(d, ours, conf.name if conf else "built-in"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def part_parsers(deadline: float, long: bool) -> list[tu.Tally]:
    out = []
    if importlib.util.find_spec("atheris") is None:
        t = tu.Tally("parsers: hypothesis (atheris not installed)")
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             str(ROOT / "core/tests/smtp/test_smtp_torture.py"),
             str(ROOT / "core/tests/config/test_config_fuzz.py"),
             str(ROOT / "core/tests/delivery/test_format_torture.py")],
            capture_output=True, text=True, timeout=max(deadline - time.monotonic(), 60),
            cwd=ROOT / "core" / "tests" / "smtp")
        m = re.search(r"(\d+) passed", res.stdout)
        t.attempts = int(m.group(1)) if m else 0
        t.record(res.returncode == 0, res.stdout[-500:])
        return [t]
    per = max((deadline - time.monotonic()) / len(FUZZ_TARGETS), 5)
    for target in FUZZ_TARGETS:
        t = tu.Tally(f"parsers: atheris {target}")
        with tempfile.TemporaryDirectory() as work:
            try:
                res = subprocess.run(
                    [sys.executable, str(ROOT / "tools/torture/fuzz_targets.py"), target,
                     f"-max_total_time={int(per)}", "-timeout=2", "-rss_limit_mb=2048",
                     f"-artifact_prefix={work}/"],
                    capture_output=True, text=True, timeout=per + 60, cwd=work)
                text = res.stdout + res.stderr
                m = re.search(r"Done (\d+) runs in (\d+) second", text)
                t.attempts = int(m.group(1)) if m else 1
                t.numbers["seconds"] = int(m.group(2)) if m else 0
                if res.returncode != 0:
                    t.failures = 1
                    t.notes.append(text[-1500:])
                    for art in Path(work).glob("*-*"):
                        keep = ROOT / "tools" / "torture" / f"finding-{target}-{art.name}"
                        shutil.copy(art, keep)
                        t.notes.append(f"input kept in {keep}")
            except subprocess.TimeoutExpired:
                t.attempts, t.failures = 1, 1
                t.notes.append("fuzzer did not stop in time")
        out.append(t)
    return out


def part_load(deadline: float, long: bool) -> list[tu.Tally]:
    out = []
    timeout = 3.0
    with Daemon(LIMITS_CONFIG, extra_env={limits.SESSION_TIMEOUT_ENV: str(timeout)}) as d:
        out.append(tu.check_caps(d, 5, 3))
        out.append(tu.check_per_ip_cap(d, 50, ip="127.0.0.7"))
        out.append(tu.check_slowloris(d, 50 if long else 20, timeout,
                                      min(deadline, time.monotonic() + 60)))
    with Daemon(LIMITS_CONFIG) as d:
        out.append(tu.check_concurrent_sessions(d, 5000, max(deadline, time.monotonic() + 60)))
        out.append(tu.check_big_message(d, 50 * 2**20, 5 * 2**20))
    return out


def part_disk(deadline: float, long: bool) -> list[tu.Tally]:
    if not tu.can_mount():
        t = tu.Tally("disk: skipped (needs root)")
        return [t]
    d = Daemon(DISK_CONFIG)
    spool = d.state / "spool"
    spool.mkdir(mode=0o700)
    tu.mount_tmpfs(spool, "8m")
    try:
        d.start()
        return [tu.check_disk_faults(d, spool, d.mail)]
    finally:
        d.stop()
        tu.umount(spool)
        d.cleanup()


def part_crash(deadline: float, long: bool) -> list[tu.Tally]:
    t = tu.Tally(f"crash: kill -9 rounds ({50 if long else 5} wanted)")
    crash = ROOT / "tools" / "torture" / "crash.py"
    if not crash.exists():
        t.notes.append("tools/torture/crash.py missing")
        return [t]
    budget = max(deadline - time.monotonic(), 30)
    res = subprocess.run([sys.executable, str(crash), "--rounds", "50" if long else "5",
                          "--max-seconds", str(int(budget))],
                         capture_output=True, text=True, timeout=budget + 300)
    lost = dups = acked = 0
    for line in res.stdout.splitlines():
        cells = line.split()
        if len(cells) == 10 and cells[0].isdigit():
            t.attempts += 1
            acked += int(cells[4])
            lost += int(cells[6])
            dups += int(cells[7])
            if int(cells[6]) or int(cells[8]):
                t.failures += 1
    t.numbers.update({"acked": acked, "acked-lost": lost, "duplicates": dups})
    if res.returncode != 0:
        t.failures = max(t.failures, 1)
        t.notes.append(res.stdout[-1500:] + res.stderr[-1500:])
    return [t]


PARTS: dict[str, Callable[[float, bool], list[tu.Tally]]] = {
    "smuggling": part_smuggling, "relay": part_relay, "parsers": part_parsers,
    "load": part_load, "disk": part_disk, "crash": part_crash,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=None, help="seconds per part")
    p.add_argument("--part", action="append", choices=sorted(PARTS),
                   help="run only this part (repeatable)")
    p.add_argument("--long", action="store_true", help="longer runs (50 crash rounds)")
    ns = p.parse_args()
    budget = ns.budget if ns.budget is not None else (600.0 if ns.long else 120.0)
    rows: list[tuple[str, tu.Tally, float]] = []
    failed = False
    for name in ns.part or list(PARTS):
        started = time.monotonic()
        try:
            tallies = PARTS[name](started + budget, ns.long)
        except Exception as exc:  # a broken part is a failure, not the end of the run
            t = tu.Tally(f"{name}: error")
            t.record(False, repr(exc))
            tallies = [t]
        took = time.monotonic() - started
        for t in tallies:
            rows.append((name, t, took))
            failed = failed or t.failures > 0
            print(f"[{name}] {t.name}: {t.attempts} attempts, {t.failures} failures "
                  f"{t.numbers or ''}", flush=True)
            for note in t.notes[:5]:
                print(f"    {note[:600]}", flush=True)
    print()
    print(f"{'part':<10} {'check':<48} {'attempts':>9} {'failures':>9} {'s':>6}  numbers")
    for name, t, took in rows:
        nums = " ".join(f"{k}={v}" for k, v in t.numbers.items())
        print(f"{name:<10} {t.name[:48]:<48} {t.attempts:>9} {t.failures:>9} {took:>6.0f}  "
              f"{nums}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
