"""End to end: ``mailriderd -n``, macros, includes and the single-instance guard.

``-n`` must print ``configuration OK`` (exit 0) or exactly one line
``FILE:LINE: message`` (exit 1). The shared compatibility corpus of real
smtpd.conf files is checked in place (``MAILRIDER_SHARED``, else ``../shared``
beside the repository root, as in tests/config/test_config_compat.py); every
file must be accepted, or refused at a line of that file for a feature of
:data:`mailrider.config.support.UNSUPPORTED`, for an environment problem, or
with a grammar error where OpenSMTPD 7.8 refuses it at the same line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from e2e_util import smtp_send, wait_delivered, wait_files
from harness import Daemon, free_port
from mailrider.config.support import UNSUPPORTED


def mailriderd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", *args],
                          capture_output=True, text=True, timeout=60,
                          env=env if env is not None else dict(os.environ))


@pytest.fixture
def folder() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mailrider-conf-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


GOOD = """\
# a small but complete configuration
port = "2525"
table aliases file:/etc/mail/aliases
table doms { example.org, "*.example.net" }
listen on 127.0.0.1 port $port tag IN
action "local" maildir "/tmp/mail/%{rcpt.user:lowercase}" alias <aliases>
action "mda" mda "/usr/bin/procmail -f %{sender}"
match from local for local action "local"
match tag IN from any for domain <doms> !mail-from "@spam.test" action "mda"
match from any for any reject
"""


def check_file(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return mailriderd("-n", "-f", str(path), *extra)


def test_good_file_is_ok(folder: Path) -> None:
    # -n reads file tables as the start does: this one must exist
    (folder / "aliases").write_text("root: admin\n")
    os.chmod(folder / "aliases", 0o644)
    path = folder / "good.conf"
    path.write_text(GOOD.replace("/etc/mail/aliases", f"{folder}/aliases"))
    res = check_file(path)
    assert (res.returncode, res.stdout, res.stderr) == (0, "configuration OK\n", "")


BAD = [
    # (name, text, line, message)
    ("syntax", 'listen on 127.0.0.1\naction "l" maildir\nmatch for local actoin "l"\n', 3,
     "unknown keyword 'actoin'"),
    ("unknown-action", 'listen on 127.0.0.1\naction "l" maildir\n\n'
     'match from local for local action "nosuch"\n', 4, "no such action 'nosuch'"),
    ("pki", 'listen on 127.0.0.1\n# TLS\npki mx.example.org cert "/nonexistent/mx.pem"\n'
     'pki mx.example.org key "/nonexistent/mx.key"\naction "l" maildir\n'
     'match for local action "l"\n', 3, "pki mx.example.org: cannot read certificate "
     "/nonexistent/mx.pem"),
    ("queue-key", 'listen on 127.0.0.1\n# at rest\nqueue encryption 0123abcd\n'
     'action "l" maildir\nmatch for local action "l"\n', 3,
     "queue encryption: the queue key must be 32 characters "
     "(make one with: openssl rand -hex 16)"),
    ("relay-srs", 'listen on 127.0.0.1\naction "out" relay srs\nmatch for any action "out"\n',
     2, "an srs key is required for srs to be specified in an action"),
    ("unterminated", 'listen on 127.0.0.1\naction "l maildir\n', 2, None),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_names_its_line(folder: Path, name: str, text: str, line: int,
                                 message: str | None) -> None:
    path = folder / f"{name}.conf"
    path.write_text(text)
    res = check_file(path)
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    if message is None:
        assert lines[0].startswith(f"{path}:{line}: "), lines
    else:
        assert lines[0] == f"{path}:{line}: {message}"


def test_backend_not_found_says_where_it_looked(folder: Path) -> None:
    path = folder / "backend.conf"
    path.write_text('listen on 127.0.0.1\n\ntable users nosuchbackend:/etc/mail/users.conf\n'
                    'action "l" maildir virtual <users>\nmatch for local action "l"\n')
    # ours first, then OpenSMTPD's folders
    env = dict(os.environ, MAILRIDER_LIBEXEC=f"{folder}/a:{folder}/b",
               MAILRIDER_OPENSMTPD_LIBEXEC=f"{folder}/smtpd")
    res = mailriderd("-n", "-f", str(path), env=env)
    assert res.returncode == 1
    assert res.stderr == (
        f"{path}:3: table users: backend 'nosuchbackend' not found (looked in: "
        f"entry point 'nosuchbackend' of group mailrider.tables, "
        f"{folder}/a/table-nosuchbackend, {folder}/b/table-nosuchbackend, "
        f"{folder}/smtpd/table-nosuchbackend)\n")
    # once the program is there (here: where OpenSMTPD keeps its own), the
    # same file is fine
    (folder / "smtpd").mkdir()
    prog = folder / "smtpd" / "table-nosuchbackend"
    prog.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(prog, 0o755)
    res = mailriderd("-n", "-f", str(path), env=env)
    assert (res.returncode, res.stdout) == (0, "configuration OK\n"), res.stderr


# --- -n is as strict as the start -----------------------------------------------

def start_daemon(path: Path, state: Path,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mailriderd -d`` on ``path``: a configuration it refuses must end it at once."""
    return mailriderd("-d", "-f", str(path), "-S", str(state), env=env)


def assert_refused_alike(path: Path, state: Path, expected: str,
                         env: dict[str, str] | None = None) -> None:
    """``-n`` and the start both exit 1 with exactly the line ``expected``."""
    res = mailriderd("-n", "-f", str(path), env=env)
    assert (res.returncode, res.stdout, res.stderr) == (1, "", expected + "\n")
    res = start_daemon(path, state, env)
    assert (res.returncode, res.stderr) == (1, expected + "\n")
    assert "Traceback" not in res.stdout


TLS_HEAD = ('pki mx.example.org cert "/nonexistent/mx.pem"\n'
            'pki mx.example.org key "/nonexistent/mx.key"\n')
TLS_TAIL = 'action "l" maildir\nmatch for local action "l"\n'
STRICT = [
    # (name, text, line, message)
    ("listen-ciphers", TLS_HEAD + "# submission\n"
     'listen on 127.0.0.1 port {port} tls pki mx.example.org ciphers "NOPE"\n' + TLS_TAIL, 4,
     "listen ciphers: no usable cipher in 'NOPE'"),
    ("listen-protocols", TLS_HEAD
     + 'listen on 127.0.0.1 port {port} smtps pki mx.example.org protocols "sslv9"\n' + TLS_TAIL,
     3, "listen protocols: unknown TLS protocol 'sslv9'"),
    ("smtp-ciphers", 'listen on 127.0.0.1 port {port}\n\nsmtp ciphers "NOPE"\n' + TLS_TAIL, 3,
     "smtp ciphers: no usable cipher in 'NOPE'"),
    ("missing-file-table", 'listen on 127.0.0.1 port {port}\n'
     'table aliases file:{folder}/nosuch-aliases\n'
     'action "l" maildir alias <aliases>\nmatch for local action "l"\n', 2,
     "table aliases: cannot read {folder}/nosuch-aliases: No such file or directory"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), STRICT, ids=[c[0] for c in STRICT])
def test_check_refuses_what_start_refuses(folder: Path, name: str, text: str, line: int,
                                          message: str) -> None:
    path = folder / f"{name}.conf"
    path.write_text(text.format(port=free_port(), folder=folder))
    assert_refused_alike(path, folder / "state",
                         f"{path}:{line}: {message.format(folder=folder)}")


def test_bad_line_of_a_file_table_is_named_at_its_own_line(folder: Path) -> None:
    table = folder / "aliases"
    table.write_text("root: admin\n\nroot: other\n")
    os.chmod(table, 0o644)
    path = folder / "dup.conf"
    path.write_text(f'listen on 127.0.0.1 port {free_port()}\ntable aliases file:{table}\n'
                    'action "l" maildir alias <aliases>\nmatch for local action "l"\n')
    assert_refused_alike(path, folder / "state",
                         f"{table}:3: duplicate key 'root' (first on line 1)")


def test_berkeley_db_table_says_how_to_convert_it(folder: Path) -> None:
    # the metadata page of a Berkeley DB hash file, as OpenSMTPD's makemap
    # writes it on Linux (libdb): its magic at offset 12
    db = folder / "aliases.db"
    db.write_bytes(bytes(12) + (0x00061561).to_bytes(4, "little") + bytes(4080))
    os.chmod(db, 0o644)
    path = folder / "bdb.conf"
    path.write_text(f'listen on 127.0.0.1 port {free_port()}\n\n'
                    f'table aliases db:{db}\n'
                    'action "l" maildir alias <aliases>\nmatch for local action "l"\n')
    assert_refused_alike(
        path, folder / "state",
        f"{path}:3: table aliases: {db} is a Berkeley DB file (OpenSMTPD's makemap); "
        f"rebuild it from its text source: mailriderctl makemap -o {db} {folder}/aliases "
        f"(with the -t type given to makemap)")
    # the command it names gives a table the same file accepts
    (folder / "aliases").write_text("root: admin\n")
    os.chmod(folder / "aliases", 0o644)
    db.unlink()
    conv = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderctl", "makemap",
                           "-o", str(db), str(folder / "aliases")],
                          capture_output=True, text=True, timeout=60)
    assert conv.returncode == 0, conv.stderr
    os.chmod(db, 0o644)
    res = check_file(path)
    assert (res.returncode, res.stdout) == (0, "configuration OK\n"), res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="backends run as the program user only as root")
def test_backend_the_program_user_cannot_run(folder: Path) -> None:
    from mailrider import paths

    libexec = folder / "libexec"
    libexec.mkdir()
    prog = libexec / "table-private"
    prog.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(prog, 0o700)  # root's own: the program user cannot run it
    path = folder / "private.conf"
    path.write_text(f'listen on 127.0.0.1 port {free_port()}\n'
                    'table users private:/etc/mail/users.conf\n'
                    'action "l" maildir virtual <users>\nmatch for local action "l"\n')
    env = dict(os.environ, MAILRIDER_LIBEXEC=str(libexec))
    assert_refused_alike(
        path, folder / "state",
        f"{path}:2: table users: user {paths.EXT_USER} cannot run the backend program {prog} "
        f"(check the mode of the file and of every folder above it)", env=env)
    # executable but not readable: a script is refused too (sh must read it)
    os.chmod(prog, 0o711)
    res = mailriderd("-n", "-f", str(path), env=env)
    assert res.returncode == 1
    assert "cannot run the backend program" in res.stderr
    os.chmod(prog, 0o755)
    res = mailriderd("-n", "-f", str(path), env=env)
    assert (res.returncode, res.stdout) == (0, "configuration OK\n"), res.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_pki_klondike_could_not_load(folder: Path) -> None:
    # -n loads each certificate and key as klondike does at start
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "crypto"))
    from pki_util import make_pki

    a = make_pki(folder, "a", "rsa", "mx.example.org")
    b = make_pki(folder, "b", "rsa", "other.example.org")
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    os.chmod(garbage, 0o644)
    for name, cert, key, message in (
            ("mismatch", a.cert, b.key, f"{b.key}: key does not match its certificate"),
            ("garbage", str(garbage), a.key, f"{garbage}: no certificate found")):
        path = folder / f"{name}.conf"
        path.write_text(f'pki mx.example.org cert "{cert}"\npki mx.example.org key "{key}"\n'
                        f'listen on 127.0.0.1 port {free_port()} tls pki mx.example.org\n'
                        + TLS_TAIL)
        assert_refused_alike(path, folder / "state",
                             f"{path}:1: pki mx.example.org: {message}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_check_says_when_keys_must_stay_in_pony(folder: Path) -> None:
    """-n names the pki whose keys pony will hold, and why; never silently."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "crypto"))
    from pki_util import make_pki

    a = make_pki(folder, "a", "rsa", "mx.example.org")
    path = folder / "tls.conf"
    path.write_text(f'pki mx.example.org cert "{a.cert}"\npki mx.example.org key "{a.key}"\n'
                    f"listen on 127.0.0.1 port {free_port()} tls pki mx.example.org\n" + TLS_TAIL)
    res = mailriderd("-n", "-f", str(path))
    assert (res.returncode, res.stdout, res.stderr) == (0, "configuration OK\n", "")
    # where delegation cannot work (here forced, as the benchmarks do)
    env = dict(os.environ, MAILRIDER_KEY_IN_PROCESS="force")
    res = mailriderd("-n", "-f", str(path), env=env)
    assert (res.returncode, res.stdout) == (0, "configuration OK\n")
    assert res.stderr.startswith("mailriderd: warning: the keys of pki mx.example.org will be "
                                 "loaded into pony, the SMTP process ('smtp key-in-process'): "
                                 "delegation to klondike is unavailable here "
                                 "(MAILRIDER_KEY_IN_PROCESS=force"), res.stderr
    assert "dynamically linked OpenSSL" in res.stderr


def test_filter_program_not_found(folder: Path) -> None:
    path = folder / "filter.conf"
    path.write_text(f'filter f1 proc-exec "{folder}/no-such-filter -x"\n'
                    f'listen on 127.0.0.1 port {free_port()} filter f1\n' + TLS_TAIL)
    assert_refused_alike(path, folder / "state",
                         f"{path}:1: filter f1: program {folder}/no-such-filter not found")
    # a proc statement is named as such; a bare name is looked for in libexec, then PATH
    path.write_text('# programs\nproc p1 "no-such-filter-program"\nfilter f1 proc p1\n'
                    f'listen on 127.0.0.1 port {free_port()} filter f1\n' + TLS_TAIL)
    env = dict(os.environ, MAILRIDER_LIBEXEC=f"{folder}/libexec",
               MAILRIDER_OPENSMTPD_LIBEXEC=f"{folder}/smtpd")
    assert_refused_alike(path, folder / "state",
                         f"{path}:2: proc p1: program no-such-filter-program not found "
                         f"(looked in: {folder}/libexec, {folder}/smtpd, PATH)", env=env)


@pytest.mark.skipif(os.geteuid() != 0, reason="filters switch user only under root")
def test_filter_user_and_program_permissions(folder: Path) -> None:
    from mailrider import paths

    prog = folder / "filter-private"
    prog.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(prog, 0o700)
    path = folder / "filter.conf"
    path.write_text(f'filter f1 proc-exec "{prog}"\n'
                    f'listen on 127.0.0.1 port {free_port()} filter f1\n' + TLS_TAIL)
    assert_refused_alike(
        path, folder / "state",
        f"{path}:1: filter f1: user {paths.EXT_USER} cannot run the program {prog} "
        f"(check the mode of the file and of every folder above it)")
    os.chmod(prog, 0o755)
    path.write_text(f'filter f1 proc-exec "{prog}" user no-such-user-here\n'
                    f'listen on 127.0.0.1 port {free_port()} filter f1\n' + TLS_TAIL)
    assert_refused_alike(path, folder / "state",
                         f"{path}:1: filter f1: user no-such-user-here does not exist")


def test_check_without_a_file_names_the_built_in_configuration(folder: Path) -> None:
    from mailrider import paths

    if os.path.exists(paths.CONFIG_FILE):
        pytest.skip(f"{paths.CONFIG_FILE} exists on this machine")
    res = mailriderd("-n", "-S", str(folder / "state"))
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == (f"configuration OK (the built-in configuration: there is no "
                          f"{paths.CONFIG_FILE})\n")


def test_child_config_error_is_one_line(folder: Path) -> None:
    # what a child finds wrong at start (here lka, whose table file is missing)
    # is the line -n would print, and exit status 1, never a traceback
    path = folder / "child.conf"
    path.write_text(f'listen on 127.0.0.1 port {free_port()}\n'
                    f'table aliases file:{folder}/nosuch\n'
                    'action "l" maildir alias <aliases>\nmatch for local action "l"\n')
    state = folder / "state"
    state.mkdir()
    mine, theirs = socket.socketpair()
    with mine, theirs:
        res = subprocess.run(
            [sys.executable, "-m", "mailrider.proc.child", "-x", "lka",
             "--fds", f"parent={theirs.fileno()}", "-S", str(state), "-f", str(path), "-d"],
            pass_fds=[theirs.fileno()], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stderr) == (
        1, f"{path}:2: table aliases: cannot read {folder}/nosuch: No such file or directory\n")


def test_error_in_an_included_file_names_that_file(folder: Path) -> None:
    inc = folder / "actions.conf"
    inc.write_text('action "l" maildir\n\nbogus statement\n')
    main = folder / "main.conf"
    main.write_text(f'listen on 127.0.0.1\ninclude "{inc}"\nmatch for local action "l"\n')
    res = check_file(main)
    assert res.returncode == 1
    assert res.stderr == f"{inc}:3: unknown keyword 'bogus'\n"


def test_D_overrides_a_macro_in_the_check(folder: Path) -> None:
    path = folder / "macro.conf"
    path.write_text('port = "2525"\nlisten on 127.0.0.1 port $port\naction "l" maildir\n'
                    'match for local action "l"\n')
    assert check_file(path).stdout == "configuration OK\n"
    res = check_file(path, "-D", "port=notaport")
    assert res.returncode == 1
    assert res.stderr == f"{path}:2: invalid port: notaport\n"


class MacroDaemon(Daemon):
    """A daemon whose port comes only from ``-D port=N``."""

    def argv(self) -> list[str]:
        return [*super().argv(), "-D", f"port={self.port}"]


def test_D_overrides_a_macro_of_the_running_daemon() -> None:
    # the file says port 1; the daemon must listen where -D says (or start() times out)
    with MacroDaemon('port = "1"\nlisten on 127.0.0.1 port $port\n'
                     'table all {{ "@" = "{user}" }}\n'
                     'action "l" maildir "{mail}/%{{rcpt.user}}" virtual <all>\n'
                     'match from local for local action "l"\n') as d:
        t = smtp_send(d.port, "a@example.org", ["m@localhost"])
        assert t.rcpts == [(250, "2.1.5 Destination address valid")]
        wait_delivered(d, "m@localhost")
        assert len(wait_files(d.mail / "m" / "new")) == 1
        assert f"127.0.0.1:{d.port}" in d.log()


def test_include_of_a_second_file() -> None:
    d = Daemon('listen on 127.0.0.1 port {port}\ninclude "{state}/rules.conf"\n')
    try:
        rules = d.state / "rules.conf"
        rules.write_text(f'table all {{ "@" = "{d.user}" }}\n'
                         f'action "inc" maildir "{d.mail}/inc-%{{rcpt.user}}" virtual <all>\n'
                         'match from local for local action "inc"\n')
        os.chmod(rules, 0o644)
        res = check_file(d.config_path)  # type: ignore[arg-type]
        assert res.stdout == "configuration OK\n", res.stderr
        d.start()
        t = smtp_send(d.port, "a@example.org", ["x@localhost"])
        assert t.rcpts[0][0] == 250
        wait_delivered(d, "x@localhost")
        assert len(wait_files(d.mail / "inc-x" / "new")) == 1
    finally:
        d.cleanup()


def test_second_daemon_on_the_same_state_folder_refuses() -> None:
    with Daemon() as d:
        other = free_port()
        res = mailriderd("-d", "-S", str(d.state), "-D", f"port={other}")
        assert res.returncode == 1
        assert "already running" in res.stderr
        assert str(d.state) in res.stderr
        # the first one is unharmed, and nobody listens on the second port
        assert d.proc is not None and d.proc.poll() is None
        assert d.ctl("show", "status").stdout.splitlines() == [
            "MDA running", "MTA running", "SMTP running"]
        t = smtp_send(d.port, "a@example.org", ["still@localhost"])
        assert t.rcpts[0][0] == 250
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", other), timeout=1).close()


# --- the shared compatibility corpus -------------------------------------------


def shared_dir() -> Path:
    env = os.environ.get("MAILRIDER_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".." / "shared"


CORPUS = shared_dir() / "compat" / "smtpd-conf"
NO_CORPUS = f"no compat corpus at {CORPUS} (MAILRIDER_SHARED names the folder holding compat/)"
VERDICTS = CORPUS / "OPENSMTPD-7.8-VERDICTS.md"
_ROW = re.compile(r"^\|\s*(\S+\.conf)\s*\|\s*(\w+)\s*\|(.*?)\|(.*?)\|\s*$")
_OPENSMTPD_LINE = re.compile(r"`[^`:]+\.conf:(\d+): ([^`]*)`")
_UNSUPPORTED = re.compile(r"^'(.+)' is not supported yet by mailrider$")
#: what an error caused by the machine, not the file, looks like
_ENVIRONMENT = re.compile(r"not found|no such|cannot|does not exist|interface|address",
                          re.IGNORECASE)


def opensmtpd_grammar_lines() -> dict[str, int]:
    """file -> line of OpenSMTPD 7.8's own ``file:line:`` rejection."""
    out: dict[str, int] = {}
    if not VERDICTS.is_file():
        return out
    for row in VERDICTS.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(row)
        if m:
            e = _OPENSMTPD_LINE.search(m.group(3))
            if e:
                out[m.group(1)] = int(e.group(1))
    return out


def classify(path: Path, res: subprocess.CompletedProcess[str],
             grammar: dict[str, int]) -> tuple[str, str, bool]:
    """(outcome, detail, acceptable) of one ``mailriderd -n`` run."""
    if res.returncode == 0:
        ok = res.stdout == "configuration OK\n" and res.stderr == ""
        return "ok", "", ok
    if res.returncode != 1:
        return f"exit {res.returncode}", res.stderr.strip()[-200:], False
    lines = res.stderr.splitlines()
    if len(lines) != 1:
        return "bad output", res.stderr.strip()[-200:], False
    m = re.match(rf"^{re.escape(str(path))}:(\d+): (.*)$", lines[0])
    if m is None:
        return "no file:line", lines[0], False
    line, message = int(m.group(1)), m.group(2)
    nlines = len(path.read_text(encoding="utf-8").splitlines())
    if not 1 <= line <= nlines:
        return "bad line", lines[0], False
    feature = _UNSUPPORTED.match(message)
    if feature:
        return "unsupported", f"{feature.group(1)}@{line}", feature.group(1) in UNSUPPORTED
    if grammar.get(path.name) == line:
        return "grammar (as OpenSMTPD)", f"{message}@{line}", True
    if _ENVIRONMENT.search(message):
        return "environment", f"{message}@{line}", True
    return "refused", f"{message}@{line}", False


def test_compat_corpus_with_mailriderd_n() -> None:
    files = sorted(CORPUS.glob("*.conf"))
    if not files:
        pytest.skip(NO_CORPUS)
    grammar = opensmtpd_grammar_lines()
    rows = []
    for path in files:
        res = check_file(path)
        outcome, detail, ok = classify(path, res, grammar)
        rows.append((path.name, outcome, detail, ok))
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"{'ok ' if ok else 'BAD'} {name:<{width}}  {outcome:<22} {detail}"
                      for name, outcome, detail, ok in rows)
    summary = (f"mailriderd -n over {len(rows)} files of {CORPUS}: "
               f"{sum(r[1] == 'ok' for r in rows)} accepted, "
               f"{sum(r[1] == 'unsupported' for r in rows)} unsupported feature, "
               f"{sum(r[3] for r in rows)} acceptable\n{table}")
    print(summary)
    assert all(r[3] for r in rows), summary
    assert any(r[1] == "ok" for r in rows), summary
    if VERDICTS.is_file():
        assert len(rows) == len(re.findall(r"^\| \S+\.conf ", VERDICTS.read_text(), re.M))
