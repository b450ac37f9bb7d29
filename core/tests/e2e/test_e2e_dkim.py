"""End to end: DKIM signing with the key in klondike (docs/dkim.md).

A real daemon relays mail to a local sink (smtp_peer.SmtpPeer) through an
action that names four keys — rsa-sha256 and ed25519-sha256, relaxed/relaxed
and simple/simple — chosen by the From domain; the sink's copy verifies with
dkimpy, its DNS answered by dkimpy's ``dnsfunc`` hook (no DNS traffic). Then
pony's and klondike's memory are scanned for the keys: found in klondike only.
``-n`` refuses an unreadable key and a key of the wrong kind at file:line.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for
from mailrider import dkim
from mailrider.crypto import der
from mailrider.crypto.dkimkeys import DkimKeyStore
from mailrider.crypto.keys import parse_private_key
from smtp_peer import SmtpPeer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crypto"))

from dkim_util import dkimpy, make_key, verify

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

#: name -> (key kind, algorithm, canonicalization, From domain)
KEYS = {
    "rr": ("rsa", "rsa-sha256", "relaxed/relaxed", "rr.example.org"),
    "rs": ("rsa", "rsa-sha256", "simple/simple", "rs.example.org"),
    "er": ("ed25519", "ed25519-sha256", "relaxed/relaxed", "er.example.org"),
    "es": ("ed25519", "ed25519-sha256", "simple/simple", "es.example.org"),
}

CONFIG = """\
{dkims}
listen on 127.0.0.1 port {{port}}
action "out" relay host smtp://127.0.0.1:{peer} dkim {{{{ {names} }}}}
action "plain" relay host smtp://127.0.0.1:{peer}
match from any for domain "remote.test" action "out"
match from any for domain "other.test" action "plain"
"""

BODY = ("Subject: signed  by   mailrider\r\nDate: Mon, 7 Dec 2026 16:00:00 +0000\r\n"
        "To: bob@remote.test\r\n\r\nfirst line  \t\r\n.leading dot\r\n\r\n"
        "trailing empty lines\r\n\r\n\r\n")


class Setup:
    def __init__(self) -> None:
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="mailrider-dkim-", dir="/tmp"))
        os.chmod(self.folder, 0o711)
        self.keys: dict[str, str] = {}
        self.records: dict[str, str] = {}
        store = DkimKeyStore()
        for name, (kind, alg, canon, domain) in KEYS.items():
            self.keys[name] = make_key(self.folder, name, kind)
            store.load(dkim.Signer(name, domain, "sel", alg, canon), self.keys[name])
            self.records[f"sel._domainkey.{domain}."] = store.dns_record(name)
        store.close()

    def dkims(self) -> str:
        return "\n".join(
            f'dkim "{n}" key "{self.keys[n]}" selector "sel" domain "{d}" '
            f"algorithm {alg} canonicalization {canon}"
            for n, (_, alg, canon, d) in KEYS.items())


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    dkimpy()
    s = Setup()
    yield s
    shutil.rmtree(s.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def relay(setup: Setup) -> Iterator[tuple[Daemon, SmtpPeer]]:
    with SmtpPeer() as peer:
        conf = CONFIG.format(dkims=setup.dkims(), peer=peer.port,
                             names=", ".join(f'"{n}"' for n in KEYS))
        d = Daemon(conf)
        try:
            d.start()
            yield d, peer
        finally:
            d.cleanup()


def _unstuff(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\.\.", b".", data)


def _send(d: Daemon, sender: str, rcpt: str, header_from: str) -> None:
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
        s.sendmail(sender, [rcpt], (f"From: Someone <{header_from}>\r\n" + BODY).encode())


def _received(peer: SmtpPeer, marker: str) -> bytes:
    def find() -> bytes | None:
        for r in peer.received:
            if marker.encode() in r.data:
                return _unstuff(r.data)
        return None
    found = wait_for(find, 30)
    assert isinstance(found, bytes)
    return found


@pytest.mark.parametrize("name", sorted(KEYS))
def test_relayed_mail_verifies_with_dkimpy(relay: tuple[Daemon, SmtpPeer], setup: Setup,
                                           name: str) -> None:
    d, peer = relay
    domain = KEYS[name][3]
    _send(d, f"alice@{domain}", "bob@remote.test", f"alice@{domain}")
    data = _received(peer, f"alice@{domain}")
    assert data.startswith(b"DKIM-Signature: v=1; a=" + KEYS[name][1].encode())
    tags = dkim.find_signature(dkim.split_fields(data.split(b"\r\n\r\n")[0] + b"\r\n"))[1]
    assert (tags["d"], tags["s"], tags["c"]) == (domain, "sel", KEYS[name][2])
    assert tags["h"].split(":")[:2] == ["from", "from"]  # oversigned
    assert verify(data, setup.records)
    # the signature covers what was sent: a changed body or From fails
    assert not verify(data.replace(b"first line", b"first lime"), setup.records)
    assert not verify(data.replace(b"alice@", b"mallory@", 1), setup.records)
    stats = dict(line.split("=", 1) for line in d.ctl("show", "stats").stdout.splitlines())
    assert int(stats["mta.dkim.signed"]) >= 1
    assert int(stats["klondike.dkim.sign"]) == int(stats["mta.dkim.signed"])


def test_no_key_for_the_from_domain_leaves_unsigned(relay: tuple[Daemon, SmtpPeer]) -> None:
    d, peer = relay
    _send(d, "carol@elsewhere.test", "bob@remote.test", "carol@elsewhere.test")
    data = _received(peer, "carol@elsewhere.test")
    assert b"DKIM-Signature" not in data
    wait_for(lambda: "dkim-unsigned" in d.log())
    # an action without dkim never signs
    _send(d, "dave@rr.example.org", "x@other.test", "dave@rr.example.org")
    assert b"DKIM-Signature" not in _received(peer, "dave@rr.example.org")
    stats = dict(line.split("=", 1) for line in d.ctl("show", "stats").stdout.splitlines())
    assert int(stats["mta.dkim.unsigned"]) >= 1
    assert int(stats["klondike.dkim.keys"]) == len(KEYS)


# -- the keys are in klondike only ---------------------------------------------------


def _digits30(n: int) -> bytes:
    out = bytearray()
    while n:
        out += (n & (2**30 - 1)).to_bytes(4, "little")
        n >>= 30
    return bytes(out)


def _needles(path: str) -> dict[str, bytes]:
    pem = pathlib.Path(path).read_bytes()
    lines = [ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----")]
    out = {f"pem line {i}": ln for i, ln in enumerate(lines[:-1]) if len(ln) == 64}
    _, rsakey = parse_private_key(pem)
    if rsakey is not None:
        for label, value in (("d", rsakey.d), ("p", rsakey.p), ("q", rsakey.q)):
            size = (value.bit_length() + 7) // 8
            out[f"{label} big-endian"] = value.to_bytes(size, "big")
            out[f"{label} limbs"] = value.to_bytes(size, "little")
            out[f"{label} python int"] = _digits30(value)
    else:
        # RFC 8410 7: PrivateKeyInfo whose privateKey holds an OCTET STRING of the seed
        info = der.parse(der.pem_blocks(pem)[0][1])
        seed = der.parse(info.children[2].content).content
        assert len(seed) == 32
        out["ed25519 seed"] = seed
        out["ed25519 seed reversed"] = seed[::-1]
    return out


def _scan(pid: int, needles: dict[str, bytes]) -> set[str]:
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                region = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            for label, needle in needles.items():
                if label not in found and needle in region:
                    found.add(label)
    return found


def _children(d: Daemon) -> dict[str, int]:
    assert d.proc is not None
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = pathlib.Path(f"/proc/{entry}/status").read_text()
            ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            argv = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, AttributeError):
            continue
        if ppid == d.proc.pid and b"-x" in argv:
            found[argv[argv.index(b"-x") + 1].decode()] = int(entry)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs /proc")
def test_dkim_keys_are_in_klondike_only(relay: tuple[Daemon, SmtpPeer], setup: Setup) -> None:
    d, peer = relay
    for name in KEYS:  # every key has signed by now (or does now)
        domain = KEYS[name][3]
        _send(d, f"mem@{domain}", "bob@remote.test", f"mem@{domain}")
        _received(peer, f"mem@{domain}")
    procs = _children(d)
    for name, path in setup.keys.items():
        needles = _needles(path)
        in_pony = _scan(procs["pony"], needles)
        in_klondike = _scan(procs["klondike"], needles)
        assert in_pony == set(), f"{name}: pony's memory holds {sorted(in_pony)}"
        secret = {"d limbs", "d big-endian", "d python int", "ed25519 seed",
                  "ed25519 seed reversed"}
        assert in_klondike & secret, f"{name}: klondike shows only {sorted(in_klondike)}"


# -- -n --------------------------------------------------------------------------------


def _check(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n", "-f",
                           str(path)], capture_output=True, text=True, timeout=60)


def _conf(folder: pathlib.Path, key: str, algorithm: str) -> pathlib.Path:
    path = folder / "dkim.conf"
    path.write_text('listen on 127.0.0.1 port 2525\n'
                    f'dkim "k" key "{key}" selector s domain example.org algorithm {algorithm}\n'
                    'action "out" relay dkim "k"\nmatch from any for any action "out"\n')
    return path


def test_check_refuses_bad_keys_at_their_line(setup: Setup) -> None:
    folder = setup.folder
    ok = _check(_conf(folder, setup.keys["rr"], "rsa-sha256"))
    assert (ok.returncode, ok.stdout) == (0, "configuration OK\n"), ok.stderr
    cases: list[tuple[str, str, str]] = [
        (setup.keys["er"], "rsa-sha256",
         f"dkim k: {setup.keys['er']}: an ed25519 key, but algorithm rsa-sha256 needs an rsa key"),
        (setup.keys["rr"], "ed25519-sha256",
         f"dkim k: {setup.keys['rr']}: an rsa key, but algorithm ed25519-sha256 needs an "
         "ed25519 key"),
        (str(folder / "missing.key"), "rsa-sha256",
         f"dkim k: {folder / 'missing.key'}: No such file or directory"),
    ]
    loose = folder / "loose.key"
    loose.write_bytes(pathlib.Path(setup.keys["rr"]).read_bytes())
    os.chmod(loose, 0o644)
    cases.append((str(loose), "rsa-sha256",
                  f"dkim k: {loose}: insecure permissions 0644 (at most 0740)"))
    for key, algorithm, message in cases:
        path = _conf(folder, key, algorithm)
        res = _check(path)
        assert (res.returncode, res.stdout, res.stderr) == (1, "", f"{path}:2: {message}\n")




# -- cross-check with OpenSMTPD's filter-dkimsign ------------------------------------

FILTER_DKIMSIGN = "/usr/libexec/opensmtpd/filter-dkimsign"


@pytest.mark.skipif(not os.access(FILTER_DKIMSIGN, os.X_OK),
                    reason="OpenSMTPD's filter-dkimsign is not installed "
                           "(Debian: opensmtpd-filter-dkimsign)")
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_cross_check_with_filter_dkimsign(setup: Setup, canon: str) -> None:
    """filter-dkimsign signs at acceptance (a listener filter, as OpenSMTPD's
    administrators run it), our relay action signs again as the mail leaves,
    with the same key: dkimpy verifies both signatures, and both computed the
    same body hash (bh=) and signed the same header fields."""
    import pwd

    from harness import program_user

    mod = dkimpy()
    name = "rr" if canon == "relaxed/relaxed" else "rs"
    domain = KEYS[name][3]
    # the filter runs as the program user (never root): its own copy of the key
    xu: pwd.struct_passwd = program_user()
    theirs = setup.folder / f"filter-{name}.key"
    theirs.write_bytes(pathlib.Path(setup.keys[name]).read_bytes())
    os.chown(theirs, xu.pw_uid, xu.pw_gid)
    os.chmod(theirs, 0o600)
    records = dict(setup.records)
    records[f"osmtpd._domainkey.{domain}."] = setup.records[f"sel._domainkey.{domain}."]
    with SmtpPeer() as peer:
        conf = (f'filter "dkimsign" proc-exec "{FILTER_DKIMSIGN} -d {domain} -s osmtpd '
                f'-c {canon} -k {theirs}"\n'
                + setup.dkims() + "\n"
                + CONFIG.format(dkims="", peer=peer.port, names=f'"{name}"')
                .replace("listen on 127.0.0.1 port {port}",
                         'listen on 127.0.0.1 port {port} filter "dkimsign"'))
        d = Daemon(conf)
        try:
            d.start()
            _send(d, f"x@{domain}", "bob@remote.test", f"x@{domain}")
            data = _received(peer, f"x@{domain}")
        finally:
            d.cleanup()
    fields = dkim.split_fields(data.split(b"\r\n\r\n")[0] + b"\r\n")
    sigs = [dkim.parse_tags(f.partition(b":")[2]) for f in fields
            if dkim.field_name(f) == "dkim-signature"]
    assert [s["s"] for s in sigs] == ["sel", "osmtpd"], sigs  # ours is outermost
    ours, theirs_tags = sigs
    assert ours["bh"] == theirs_tags["bh"]
    assert ours["c"] == theirs_tags.get("c", "simple/simple") == canon
    # the same fields (filter-dkimsign lists them bottom up), From oversigned by us only
    assert sorted(ours["h"].split(":")) == sorted(["from"] + [
        n.lower() for n in theirs_tags["h"].split(":")])

    def dnsfunc(q: object, timeout: int = 5) -> bytes:
        text = q.decode() if isinstance(q, bytes) else str(q)
        return records.get(text.rstrip(".") + ".", "").encode()

    verifier = mod.DKIM(data)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc)
    assert verifier.verify(idx=1, dnsfunc=dnsfunc)
