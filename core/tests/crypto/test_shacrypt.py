from __future__ import annotations

import shutil
import subprocess

import pytest
from mailrider.crypto import shacrypt

# Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors
SPEC_VECTORS = [
    ("$5$saltstring", "Hello world!",
     "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("$5$rounds=10000$saltstringsaltstring", "Hello world!",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("$5$rounds=5000$toolongsaltstring", "This is just a test",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("$5$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
    ("$5$rounds=77777$short", "we have a short salt string but not a short password",
     "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("$5$rounds=123456$asaltof16chars..", "a short string",
     "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
    ("$5$rounds=10$roundstoolow", "the minimum number is still observed",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoE"
     "OfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vO"
     "uZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1y"
     "xdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("$6$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9"
     "t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("$6$rounds=77777$short", "we have a short salt string but not a short password",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFm"
     "tlcGZelFl5CxtgfiAc0"),
    ("$6$rounds=123456$asaltof16chars..", "a short string",
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoB"
     "K25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("$6$rounds=10$roundstoolow", "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4"
     "ZEQpyUNGc0dqbpBYYBaHHrsX."),
]


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC_VECTORS)
def test_spec_vectors(setting: str, password: str, expected: str) -> None:
    assert shacrypt.crypt(password, setting) == expected
    assert shacrypt.verify(password, expected)
    assert not shacrypt.verify(password + "x", expected)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("scheme", ["5", "6"])
@pytest.mark.parametrize(("salt", "password"), [
    ("abc", "secret"), ("0123456789abcdef", "pässwörd ünicode"), ("./xyZ", "with space\ttab"),
    ("s", "a" * 200),
])
def test_matches_openssl_passwd(scheme: str, salt: str, password: str) -> None:
    ref = subprocess.run(["openssl", "passwd", f"-{scheme}", "-salt", salt, "-stdin"],
                         input=password.encode() + b"\n", capture_output=True,
                         check=True).stdout.decode().strip()
    assert ref.startswith(f"${scheme}${salt}$")
    assert shacrypt.crypt(password, f"${scheme}${salt}") == ref
    assert shacrypt.verify(password, ref)
    assert not shacrypt.verify(password + "!", ref)


def test_hash_password_round_trip_and_fresh_salt() -> None:
    a = shacrypt.hash_password("hunter2")
    b = shacrypt.hash_password("hunter2")
    assert a.startswith("$6$") and a != b  # random salts
    assert len(a.split("$")[2]) == 16
    assert shacrypt.verify("hunter2", a) and not shacrypt.verify("hunter3", a)
    c = shacrypt.hash_password("pw", "$5$", rounds=1000, salt="fixedsalt")
    assert c == shacrypt.crypt("pw", "$5$rounds=1000$fixedsalt")
    assert c.startswith("$5$rounds=1000$fixedsalt$") and len(c.split("$")[-1]) == 43


@pytest.mark.parametrize("kwargs", [
    {"scheme": "$1$"}, {"rounds": 999}, {"rounds": 1_000_000_000},
    {"salt": "x" * 17}, {"salt": "bad$salt"},
])
def test_hash_password_refuses_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        shacrypt.hash_password("pw", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    "$6$", "$6$salt$short", "$6$rounds=abc$salt$" + "a" * 86, "$7$salt$xyz",
    "$6$salt$" + "!" * 86,
])
def test_verify_refuses_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        shacrypt.verify("pw", bad)


def test_empty_password_matches_the_system_crypt() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt as system_crypt
        except ImportError:
            pytest.skip("no crypt module")
    for setting in ("$5$./xyZ", "$6$rounds=1234$abc"):
        ref = system_crypt.crypt("", setting)
        if not ref or ref.startswith("*"):
            pytest.skip("system crypt lacks SHA-crypt")
        assert shacrypt.crypt("", setting) == ref
        assert shacrypt.verify("", ref) and not shacrypt.verify(" ", ref)
