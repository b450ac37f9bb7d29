"""DKIM (RFC 6376) signing, without the key: canonicalisation, hashes, the header.

Pure: no sockets, no clock (the caller gives the time), no key, no logging,
nothing from ``proc/``. pony feeds a message to :class:`MessageHasher`,
builds the ``DKIM-Signature`` field with :func:`prepare` and asks klondike to
sign :attr:`Prepared.signing_input`; klondike checks that input with
:func:`check_signing_input` before it signs (docs/dkim.md §3).

Invariants:

* the message is canonicalised as it leaves on the wire: CRLF, a lone LF
  and a lone CR each end a line, and an unterminated last line is ended
  (what :class:`mailrider.smtp.client.BodyEncoder` sends), so the spool's LF
  endings hash as the CRLF the receiver sees;
* the header section is held up to :data:`HEADER_MAX` bytes, never more; the
  body is hashed as it streams by, with only the current line and a count of
  trailing empty lines held;
* every value written into the field is a validated token (domain, selector,
  algorithm, canonicalisation, field names from a fixed list, base64), so no
  CR, LF or ``;`` can get into it from a message;
* the signed header fields are those RFC 6376 §5.4.1 recommends that are
  present, each listed once per instance, and ``From`` once more than present
  (oversigned: a From added later breaks the signature).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

#: RFC 6376 3.3 and RFC 8463 3: the signing algorithms offered
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
#: RFC 6376 3.4: header/body canonicalisations
CANONICALIZATIONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")
#: RFC 6376 5.4.1: the header fields that SHOULD be signed when present, in
#: the order they are listed in h=
SIGNED_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc",
    "resent-date", "resent-from", "resent-to", "resent-cc",
    "in-reply-to", "references",
    "list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
    "list-owner", "list-archive",
)
#: fields listed once more than they occur (RFC 6376 8.15)
OVERSIGNED = frozenset({"from"})
#: the header section held to sign; a longer one is not signed (logged)
HEADER_MAX = 256 * 1024
#: the largest signing input klondike accepts (what pony sends it)
SIGNING_INPUT_MAX = 64 * 1024
#: fold the field at this width (RFC 5322 2.1.1 recommends 78)
_FOLD = 76

_WSP_RUN = re.compile(rb"[ \t]+")
_FWS = re.compile(rb"\r\n(?=[ \t])")
#: RFC 6376 3.5 d= / s=: a domain name, and selector sub-domains
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
SELECTOR_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: the tags of the fields we make (RFC 6376 3.5)
_OWN_TAGS = frozenset({"v", "a", "c", "d", "s", "t", "h", "bh", "b"})


class DkimError(ValueError):
    """A message or request that cannot be signed; the text names why (no key bytes)."""


@dataclass(frozen=True, slots=True)
class Signer:
    """A configured ``dkim`` entry as pony knows it: everything but the key."""

    name: str
    domain: str
    selector: str
    algorithm: str = "rsa-sha256"
    canonicalization: str = "relaxed/relaxed"

    def __post_init__(self) -> None:
        if not DOMAIN_RE.fullmatch(self.domain) or len(self.domain) > 253:
            raise DkimError(f"invalid domain {self.domain!r}")
        if not SELECTOR_RE.fullmatch(self.selector) or len(self.selector) > 253:
            raise DkimError(f"invalid selector {self.selector!r}")
        if self.algorithm not in ALGORITHMS:
            raise DkimError(f"unknown algorithm {self.algorithm!r}")
        if self.canonicalization not in CANONICALIZATIONS:
            raise DkimError(f"unknown canonicalization {self.canonicalization!r}")

    @property
    def header_canon(self) -> str:
        return self.canonicalization.partition("/")[0]

    @property
    def body_canon(self) -> str:
        return self.canonicalization.partition("/")[2]


# -- fields and canonicalisation ------------------------------------------------


def split_fields(header: bytes) -> list[bytes]:
    """Header fields of a CRLF header section, each with its folds and final CRLF.

    A line that starts with SP or HTAB continues the field before it; a
    continuation line before any field is a field of its own (it matches no
    signed name)."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def field_name(field: bytes) -> str:
    """The lower-cased name of a field ("" when it has no colon)."""
    name, colon, _ = field.partition(b":")
    if not colon:
        return ""
    return name.rstrip(b" \t").decode("ascii", "replace").lower()


def canon_header(field: bytes, method: str) -> bytes:
    """One field, with its CRLF, canonicalised (RFC 6376 3.4.1, 3.4.2)."""
    if method == "simple":
        return field
    name, _, value = field.partition(b":")
    value = _FWS.sub(b"", value)
    if value.endswith(b"\r\n"):
        value = value[:-2]
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


class BodyCanon:
    """Streaming body canonicalisation and SHA-256 (RFC 6376 3.4.3, 3.4.4).

    Input: complete lines with LF endings (already normalised), in blocks.
    """

    def __init__(self, method: str) -> None:
        if method not in ("simple", "relaxed"):
            raise DkimError(f"unknown body canonicalization {method!r}")
        self.relaxed = method == "relaxed"
        self.hash = hashlib.sha256()
        self._pending = 0  # empty lines not written yet (they may end the body)
        self._any = False
        self.length = 0

    def lines(self, block: bytes) -> None:
        if self.relaxed:
            block = _WSP_RUN.sub(b" ", block).replace(b" \n", b"\n")
        stripped = block.rstrip(b"\n")
        ends = len(block) - len(stripped)
        if not stripped:
            self._pending += ends
            return
        out = b"\r\n" * self._pending + stripped.replace(b"\n", b"\r\n") + b"\r\n"
        self.hash.update(out)
        self.length += len(out)
        self._any = True
        self._pending = ends - 1

    def digest(self) -> bytes:
        """The body hash; an empty body is CRLF in simple, nothing in relaxed."""
        if not self._any and not self.relaxed:
            self.hash.update(b"\r\n")
            self.length += 2
            self._any = True
        return self.hash.digest()


class MessageHasher:
    """Feed a message as stored or sent (any line endings); then :meth:`finish`
    gives the header fields (CRLF) and the body hash.

    :class:`DkimError` when the header section exceeds :data:`HEADER_MAX`.
    """

    def __init__(self, body_canon: str) -> None:
        self.body = BodyCanon(body_canon)
        self._cr = False  # a held-back CR: it may start a CRLF
        self._partial = b""  # the current line, not ended yet
        self._header: bytearray | None = bytearray()  # LF lines, None once the body began
        self._fields: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        if not chunk:
            return
        data = self._partial + chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        if end:
            self._complete(data[:end])

    def _complete(self, block: bytes) -> None:
        if self._header is not None:
            start = len(self._header)
            self._header += block
            # the empty line that ends the header section (or an empty header)
            at = 0 if self._header.startswith(b"\n") else self._header.find(b"\n\n",
                                                                         max(0, start - 1))
            if at < 0:
                if len(self._header) > HEADER_MAX:
                    raise DkimError("header section too large to sign")
                return
            cut = at + 1 if at else 0
            if cut > HEADER_MAX:
                raise DkimError("header section too large to sign")
            header = bytes(self._header[:cut])
            rest = bytes(self._header[cut + 1:])  # after the empty line
            self._header = None
            self._fields = split_fields(header.replace(b"\n", b"\r\n"))
            if rest:
                self.body.lines(rest)
            return
        self.body.lines(block)

    @property
    def fields(self) -> list[bytes] | None:
        """The header fields once the header section has ended, else None."""
        return self._fields if self._header is None else None

    def finish(self) -> tuple[list[bytes], bytes]:
        """(header fields, body hash). An unterminated last line is ended first."""
        if self._cr:
            self._cr = False
            self._complete(self._partial + b"\n")
            self._partial = b""
        elif self._partial:
            self._complete(self._partial + b"\n")
            self._partial = b""
        if self._header is not None:  # no empty line: all header, empty body
            if len(self._header) > HEADER_MAX:
                raise DkimError("header section too large to sign")
            self._fields = split_fields(bytes(self._header).replace(b"\n", b"\r\n"))
            self._header = None
        return self._fields, self.body.digest()


# -- the signature field ---------------------------------------------------------


def signed_names(fields: list[bytes]) -> list[str]:
    """h=: each recommended field once per instance present, From once more."""
    present: dict[str, int] = {}
    for f in fields:
        name = field_name(f)
        present[name] = present.get(name, 0) + 1
    names: list[str] = []
    for name in SIGNED_HEADERS:
        count = present.get(name, 0) + (1 if name in OVERSIGNED else 0)
        names += [name] * count
    return names


def header_input(fields: list[bytes], names: list[str], method: str) -> bytes:
    """The canonicalised fields that h= names, each instance taken from the
    bottom up, a name with no instance left contributing nothing (RFC 6376 5.4.2)."""
    by_name: dict[str, list[bytes]] = {}
    for f in fields:
        by_name.setdefault(field_name(f), []).append(f)
    out = bytearray()
    for name in names:
        instances = by_name.get(name)
        if instances:
            out += canon_header(instances.pop(), method)
    return bytes(out)


def _fold(tags: list[str]) -> str:
    """``DKIM-Signature: tag; tag; ...`` folded with CRLF TAB at :data:`_FOLD`
    columns; the h= list may break after a colon (FWS is allowed there,
    RFC 6376 3.5)."""
    atoms: list[tuple[str, str]] = []  # (separator, text)
    for i, tag in enumerate(tags):
        end = ";" if i < len(tags) - 1 else ""
        if tag.startswith("h="):
            names = tag[2:].split(":")
            for j, name in enumerate(names):
                text = ("h=" if j == 0 else "") + name + (":" if j < len(names) - 1 else end)
                atoms.append((" " if j == 0 else "", text))
        else:
            atoms.append((" ", tag + end))
    lines = ["DKIM-Signature:"]
    for sep, text in atoms:
        if len(lines[-1]) + len(sep) + len(text) > _FOLD and lines[-1] != "\t":
            lines.append("\t")
            sep = ""
        lines[-1] += sep + text
    return "\r\n".join(lines)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A field waiting for its signature."""

    signer: Signer
    #: the DKIM-Signature field up to and including ``b=``, folded, without CRLF
    field_prefix: str
    #: what klondike signs: the signed fields then ``field_prefix``, canonicalised
    signing_input: bytes

    def field(self, signature: bytes) -> bytes:
        """The whole field with its CRLF, ``b=`` folded at the field width."""
        b64 = base64.b64encode(signature).decode("ascii")
        first = self.field_prefix.rsplit("\r\n", 1)[-1]
        room = max(8, _FOLD - len(first))
        parts = [b64[:room]] + [b64[i:i + _FOLD - 8] for i in range(room, len(b64), _FOLD - 8)]
        return (self.field_prefix + "\r\n\t ".join(p for p in parts if p) + "\r\n").encode("ascii")


def prepare(signer: Signer, fields: list[bytes], body_hash: bytes, timestamp: int) -> Prepared:
    """The DKIM-Signature field for a message, before its ``b=``."""
    if len(body_hash) != 32:
        raise DkimError("the body hash is SHA-256")
    names = signed_names(fields)
    tags = [
        "v=1", f"a={signer.algorithm}", f"c={signer.canonicalization}",
        f"d={signer.domain}", f"s={signer.selector}", f"t={int(timestamp)}",
        "h=" + ":".join(names),
        "bh=" + base64.b64encode(body_hash).decode("ascii"),
        "b=",
    ]
    prefix = _fold(tags)
    method = signer.header_canon
    own = canon_header(prefix.encode("ascii") + b"\r\n", method)[:-2]
    data = header_input(fields, names, method) + own
    if len(data) > SIGNING_INPUT_MAX:
        raise DkimError("signed header fields too large")
    return Prepared(signer, prefix, data)


def from_domain(fields: list[bytes]) -> str | None:
    """The domain of the single address of the single From field, lower-cased;
    None when there is no From, several, or not exactly one address."""
    froms = [f for f in fields if field_name(f) == "from"]
    if len(froms) != 1:
        return None
    value = _FWS.sub(b"", froms[0].partition(b":")[2]).strip()
    text = value.decode("utf-8", "replace")
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # quoted display names
    text = re.sub(r"\((?:[^()\\]|\\.)*\)", " ", text)  # (simple) comments
    if any(c in text for c in ",;:"):  # a list, a group or a source route
        return None
    addrs: list[str] = re.findall(r"<([^<>]*)>", text)
    if not addrs:
        addrs = [text.strip()]
    if len(addrs) != 1 or any(c.isspace() for c in addrs[0].strip()):
        return None
    domain = addrs[0].strip().rpartition("@")[2].strip().rstrip(".").lower()
    if not domain or not DOMAIN_RE.fullmatch(domain):
        return None
    return domain


def choose(signers: list[Signer], domain: str | None) -> Signer | None:
    """The signer for a From domain: the one whose ``domain`` is that domain,
    else the one of its closest parent domain; None when none fits."""
    if domain is None:
        return None
    best: Signer | None = None
    for s in signers:
        d = s.domain.lower()
        if domain == d or domain.endswith("." + d):
            if best is None or len(d) > len(best.domain):
                best = s
    return best


# -- klondike's check, and verification ------------------------------------------


def parse_tags(value: bytes) -> dict[str, str]:
    """A tag list (RFC 6376 3.2), folding whitespace removed around tags and
    inside values; DkimError on a duplicate tag or a malformed one."""
    text = re.sub(r"[ \t]+", "", _FWS.sub(b"", value).decode("ascii"))
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        name, eq, val = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in tags:
            raise DkimError("malformed tag list")
        tags[name] = val
    return tags


def check_signing_input(data: bytes, signer: Signer) -> None:
    """What klondike checks before it signs ``data`` with ``signer``'s key:
    that it is a canonicalised DKIM signing input for this very entry (docs/dkim.md §3).

    The input must be header fields in the entry's header canonicalisation,
    ending in a DKIM-Signature field with an empty ``b=``, whose tags are those
    :func:`prepare` writes (no ``l=``, ``i=``, ``x=``), naming this entry's
    domain, selector, algorithm and canonicalisation and a SHA-256 body hash,
    and whose h= list accounts, in order, for every field before it.
    """
    if len(data) > SIGNING_INPUT_MAX:
        raise DkimError("signing input too large")
    try:
        data.decode("ascii")
    except UnicodeDecodeError:
        raise DkimError("signing input is not ASCII") from None
    last = -1
    for m in re.finditer(rb"\r\n(?![ \t])", data):
        last = m.end()
    own = data[last:] if last >= 0 else data
    prefix = data[:last] if last >= 0 else b""
    if field_name(own) != "dkim-signature":
        raise DkimError("the input does not end with a DKIM-Signature field")
    method = signer.header_canon
    if canon_header(own + b"\r\n", method) != own + b"\r\n":
        raise DkimError("the DKIM-Signature field is not canonicalised")
    try:
        tags = parse_tags(own.partition(b":")[2])
    except UnicodeDecodeError:
        raise DkimError("malformed tag list") from None
    # only the tags prepare() writes: no l= (a signature that would cover any
    # body appended later), no i=, x= or z=
    extra = set(tags) - _OWN_TAGS
    if extra:
        raise DkimError(f"tag {sorted(extra)[0]}= is not one we sign")
    if not re.fullmatch(r"[0-9]{1,12}", tags.get("t", "0")):
        raise DkimError("tag t= is not a time")
    want = {"v": "1", "a": signer.algorithm, "c": signer.canonicalization,
            "s": signer.selector}
    for tag, value in want.items():
        if tags.get(tag) != value:
            raise DkimError(f"tag {tag}= does not fit the key")
    if tags.get("d", "").lower() != signer.domain.lower():
        raise DkimError("tag d= does not fit the key")
    if tags.get("b") != "" or not own.rstrip(b" \t").endswith(b"b="):
        raise DkimError("b= must be last and empty")
    bh = tags.get("bh", "")
    if not _B64.fullmatch(bh) or len(base64.b64decode(bh)) != 32:
        raise DkimError("bh= is not a SHA-256 hash")
    names = [n.lower() for n in tags.get("h", "").split(":")]
    if "from" not in names or any(not re.fullmatch(r"[!-9;-~]+", n) for n in names):
        raise DkimError("h= must list From")
    if "dkim-signature" in names:
        raise DkimError("h= lists DKIM-Signature")
    fields = split_fields(prefix)
    if b"".join(fields) != prefix:
        raise DkimError("the signed fields are malformed")
    i = 0
    for name in names:
        if i < len(fields) and field_name(fields[i]) == name:
            i += 1
    if i != len(fields):
        raise DkimError("the signed fields do not follow h=")
    for f in fields:
        if canon_header(f, method) != f:
            raise DkimError("the signed fields are not canonicalised")


def find_signature(fields: list[bytes]) -> tuple[int, dict[str, str]]:
    """The index and tags of the first DKIM-Signature field (tests, verification)."""
    for i, f in enumerate(fields):
        if field_name(f) == "dkim-signature":
            return i, parse_tags(f.partition(b":")[2])
    raise DkimError("no DKIM-Signature field")


def verification_input(message: bytes) -> tuple[dict[str, str], bool, bytes]:
    """Recompute what a verifier does for the first signature of ``message``:
    (its tags, whether bh= matches the body, the data its b= signs).

    The signature itself is checked by the caller with the public key (the
    tests use an independent verifier as well)."""
    probe = MessageHasher("simple")
    probe.feed(message)
    fields, _ = probe.finish()
    index, tags = find_signature(fields)
    header_c, _, body_c = tags.get("c", "simple/simple").partition("/")
    hasher = MessageHasher(body_c or "simple")
    hasher.feed(message)
    fields, body_hash = hasher.finish()
    names = [n.strip().lower() for n in tags.get("h", "").split(":")]
    others = fields[:index] + fields[index + 1:]
    own = fields[index]
    name, _, value = own.partition(b":")
    stripped = re.sub(rb"(;[ \t\r\n]*b[ \t\r\n]*=)[^;]*", rb"\1", b";" + value)[1:]
    own_c = canon_header(name + b":" + stripped, header_c)
    if own_c.endswith(b"\r\n"):
        own_c = own_c[:-2]
    data = header_input(others, names, header_c) + own_c
    bh_ok = base64.b64decode(tags.get("bh", "")) == body_hash
    return tags, bh_ok, data
