"""A throwaway OpenLDAP slapd for the tests: mdb database, loopback and ldapi only."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SLAPD = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd")
                                  else None)
SLAPADD = shutil.which("slapadd") or ("/usr/sbin/slapadd" if os.path.exists("/usr/sbin/slapadd")
                                      else None)
SCHEMA = Path("/etc/ldap/schema")
MODULES = next((p for p in ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap")
                if os.path.exists(os.path.join(p, "back_mdb.la"))
                or os.path.exists(os.path.join(p, "back_mdb.so"))), None)

SUFFIX = "dc=example,dc=org"
ROOTDN = "cn=admin,dc=example,dc=org"
ROOTPW = "root-Secret-pw"
SERVICE_DN = "cn=smtpd,ou=services,dc=example,dc=org"
SERVICE_PW = "svc-Secret-pw"


def missing() -> str | None:
    """None when a throwaway slapd can run here, else why not."""
    if SLAPD is None or SLAPADD is None:
        return ("slapd not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y "
                "slapd ldap-utils)")
    if not all((SCHEMA / f"{s}.schema").exists() for s in ("core", "cosine", "nis", "misc",
                                                           "inetorgperson")):
        return f"OpenLDAP schema files not found in {SCHEMA}"
    return None


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def ldif(entries: list[dict[str, list[str] | str]]) -> str:
    out = []
    for e in entries:
        lines = [f"dn: {e['dn']}"]
        for k, v in e.items():
            if k == "dn":
                continue
            for item in [v] if isinstance(v, str) else v:
                lines.append(f"{k}: {item}")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


BASE_ENTRIES: list[dict[str, list[str] | str]] = [
    {"dn": SUFFIX, "objectClass": ["dcObject", "organization"], "o": "Example", "dc": "example"},
    *({"dn": f"ou={ou},{SUFFIX}", "objectClass": "organizationalUnit", "ou": ou}
      for ou in ("people", "aliases", "domains", "hosts", "services")),
    {"dn": SERVICE_DN, "objectClass": ["organizationalRole", "simpleSecurityObject"],
     "cn": "smtpd", "userPassword": SERVICE_PW},
]


class Slapd:
    """One slapd: ``url`` (ldap://), ``ldaps_url``, ``ldapi_url``; restart keeps them."""

    def __init__(self, entries: list[dict[str, list[str] | str]],
                 certs: dict[str, Path] | None = None) -> None:
        assert SLAPD is not None and SLAPADD is not None
        self.dir = Path(tempfile.mkdtemp(prefix="mailrider-slapd-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "db").mkdir()
        self.port = free_port()
        self.ldaps_port = free_port() if certs else None
        self.socket = str(self.dir / "ldapi")
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}" if certs else None
        self.ldapi_url = "ldapi://" + quote(self.socket, safe="")
        self.certs = certs
        self.proc: subprocess.Popen[bytes] | None = None
        conf = [f"include {SCHEMA}/{s}.schema" for s in ("core", "cosine", "inetorgperson", "misc",
                                                          "nis")]
        if MODULES:
            conf += [f"modulepath {MODULES}", "moduleload back_mdb"]
        conf += [f"pidfile {self.dir}/slapd.pid", f"argsfile {self.dir}/slapd.args"]
        if certs:
            conf += [f"TLSCACertificateFile {certs['ca.crt']}",
                     f"TLSCertificateFile {certs['server.crt']}",
                     f"TLSCertificateKeyFile {certs['server.key']}"]
        conf += [
            "sizelimit 500",
            "database mdb", "maxsize 16777216", f'suffix "{SUFFIX}"', f'rootdn "{ROOTDN}"',
            f"rootpw {ROOTPW}", f"directory {self.dir}/db",
            "access to attrs=userPassword by self auth by anonymous auth "
            f'by dn.exact="{SERVICE_DN}" read by * none',
            "access to * by * read",
        ]
        (self.dir / "slapd.conf").write_text("\n".join(conf) + "\n")
        (self.dir / "data.ldif").write_text(ldif(BASE_ENTRIES + entries))
        res = subprocess.run([SLAPADD, "-f", str(self.dir / "slapd.conf"), "-l",
                              str(self.dir / "data.ldif")], capture_output=True, text=True,
                             timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"slapadd failed: {res.stderr}")

    def start(self) -> Slapd:
        urls = f"{self.url}/ {self.ldapi_url}/"
        if self.ldaps_url:
            urls += f" {self.ldaps_url}/"
        log = open(self.dir / "slapd.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [SLAPD, "-h", urls, "-f", str(self.dir / "slapd.conf"), "-d", "0"],
                stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if os.path.exists(self.socket):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "slapd.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"slapd did not start:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made with openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=mailrider test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    for p in folder.iterdir():
        os.chmod(p, 0o644)
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key")}


BASE_CONFIG = """\
url: {url}
username: {binddn}
password: {bindpw}
basedn: dc=example,dc=org
alias_filter: (&(objectClass=nisMailAlias)(cn=%u))
alias_attributes: rfc822MailMember
credentials_filter: (&(objectClass=posixAccount)(uid=%u))
credentials_attributes: uid, description
domain_filter: (associatedDomain=%u)
domain_attributes: associatedDomain
userinfo_filter: (&(objectClass=posixAccount)(uid=%u))
userinfo_attributes: uidNumber, gidNumber, homeDirectory
mailaddr_filter: (&(objectClass=inetOrgPerson)(mail=%u))
mailaddr_attributes: mail
mailaddrmap_filter: (&(objectClass=inetOrgPerson)(uid=%u))
mailaddrmap_attributes: mail
netaddr_filter: (ipHostNumber=%u)
netaddr_attributes: ipHostNumber
auth_filter: (&(objectClass=inetOrgPerson)(uid=%u))
"""


def base_config(url: str, extra: str = "") -> str:
    return BASE_CONFIG.format(url=url, binddn=SERVICE_DN, bindpw=SERVICE_PW) + extra
