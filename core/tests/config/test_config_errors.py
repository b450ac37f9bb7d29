"""Syntax and semantic errors: the exact ``file:line: message``; includes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from mailrider.config import parse_file, parse_string
from mailrider.errors import ConfigError

PKI = 'pki h cert "/c"\npki h key "/k"\n'  # lines 1-2 when prepended

CASES = [
    # --- syntax ---
    ("frobnicate on\n", "1: unknown keyword 'frobnicate'"),
    ("\n\nlisten on lo frobnicate\n", "3: unknown keyword 'frobnicate'"),
    ("listen on\n", "1: syntax error near end of line"),
    ("listen lo\n", "1: syntax error near 'lo'"),
    ("listen on lo port\n", "1: syntax error near end of line"),
    ("listen on lo port 99999\n", "1: invalid port: 99999"),
    ("listen on lo port nosuchservice\n", "1: invalid port: nosuchservice"),
    ("pki <domain> cert <path/to/crt\n", "1: syntax error near '<'"),
    ("on lo\n", "1: syntax error near 'on'"),
    ("table t { }\n", "1: syntax error near '}'"),
    ("table t { a, b = c }\n", "1: table mixes list and mapping entries"),
    ("table t { a = b, c }\n", "1: table mixes list and mapping entries"),
    ("table t {\n a,\n , }\n", "3: syntax error near ','"),
    ("table t { a\n", "1: syntax error near end of file"),
    ("action a frob\n", "1: unknown keyword 'frob'"),
    ("action a mbox alias\n", "1: syntax error near end of line"),
    ("action a mda\n", "1: syntax error near end of line"),
    ("action a lmtp\n", "1: syntax error near end of line"),
    ("action a relay alias <x>\n", "1: syntax error near 'alias'"),
    ("action a mbox \\\n  host x\n", "2: syntax error near 'host'"),
    ("action a mbox ttl 3w\n", "1: invalid duration: 3w"),
    ("action a mbox\nmatch from any\n", "2: syntax error near end of line"),
    ("action a mbox\nmatch from nowhere action a\n", "2: unknown keyword 'nowhere'"),
    ("action a mbox\nmatch for any action a extra\n", "2: unknown keyword 'extra'"),
    ("action a mbox\nmatch !action a\n", "2: syntax error near 'action'"),
    ("filter f phase nowhere match rdns junk\n", "1: invalid filter phase 'nowhere'"),
    ("filter f phase connect match junk\n", "1: syntax error near 'junk'"),
    ("filter f phase connect match rdns\n", "1: syntax error near end of line"),
    ("filter f phase connect match rdns reject\n", "1: syntax error near end of line"),
    ("filter f phase connect match helo <localnames> junk\n",
     "1: filter condition 'helo' is not available in phase connect"),
    ("filter f phase commit match rdns junk\n",
     "1: decision 'junk' is not available in phase commit"),
    ("filter f frob\n", "1: unknown keyword 'frob'"),
    ("filter f chain g\n", "1: syntax error near 'g'"),
    ("bounce warn-interval 1h 2h 3h 4h 5h\n", "1: at most 4 bounce warn-intervals"),
    ("smtp max-message-size 12Q\n", "1: invalid size: 12Q"),
    ("action a relay srs\n", "1: an srs key is required for srs to be specified in an action"),
    ('srs key "k"\nsrs ttl 23h\n', '2: ttl delay "23h" is too short'),
    ("smtp limit max-bogus 3\n", "1: invalid smtp limit keyword 'max-bogus'"),
    ("smtp limit\n", "1: syntax error near end of line"),
    ("smtp limit max-rcpt 0\n", "1: invalid max-rcpt: 0"),
    ("smtp limit sessions 0\n", "1: invalid sessions: 0"),
    ("\nsmtp limit sessions-per-address 1.5\n", "2: invalid sessions-per-address: 1.5"),
    ("smtp limit max-deliveries many\n", "1: invalid max-deliveries: many"),
    ("smtp limit sessions-per-local-address\n", "1: syntax error near end of line"),
    ("smtp sub-addr-delim ab\n", "1: invalid sub-addr-delim: ab"),
    ("mda limit max-frobs 3\n", "1: invalid mda limit keyword 'max-frobs'"),
    ("scheduler limit max-inflight x\n", "1: invalid max-inflight: x"),
    ("queue frob\n", "1: unknown keyword 'frob'"),
    ("pki h dhe maybe\n", "1: invalid dhe parameter: maybe"),
    ("ca c key \"/x\"\n", "1: syntax error near 'key'"),
    # --- references, in file order ---
    ("action a mbox\nmatch for any action b\n", "2: no such action 'b'"),
    ("match for any action a\naction a mbox\n", "1: no such action 'a'"),
    ("match from src <nets> for any reject\n", "1: no such table <nets>"),
    ("action a mbox alias <aliases>\n", "1: no such table <aliases>"),
    ("listen on lo filter f\n", "1: no such filter 'f'"),
    ("listen on lo tls pki nope\n", "1: no such pki 'nope'"),
    (PKI + "listen on lo tls pki h ca nope\n", "3: no such ca 'nope'"),
    ("filter f proc p\n", "1: no such proc 'p'"),
    ("filter f chain { a }\n", "1: no such filter 'a'"),
    ("action a mda x wrapper w\n", "1: no such mda wrapper 'w'"),
    ("action a relay filter nope\n", "1: no such filter 'nope'"),
    # --- duplicates ---
    ("table t { a }\n\ntable t { b }\n", "3: table 't' already defined"),
    ("action a mbox\naction a mbox\n", "2: action 'a' already defined"),
    ("ca c cert \"/x\"\nca c cert \"/y\"\n", "2: ca 'c' already defined"),
    ('pki h cert "/a"\npki H cert "/b"\n', "2: pki 'h': cert already specified"),
    ("filter f proc-exec x\nfilter f proc-exec y\n", "2: filter 'f' already defined"),
    ('proc p "x"\nproc p "y"\n', "2: proc 'p' already defined"),
    ('mda wrapper w "x"\nmda wrapper w "y"\n', "2: mda wrapper 'w' already defined"),
    ("listen on socket\nlisten on socket\n", "2: the socket listener is already configured"),
    ("listen on lo port 1 port 2\n", "1: listen option 'port': port already specified"),
    (PKI + "listen on lo tls smtps pki h\n", "3: listen option 'smtps': tls already specified"),
    ("action a mbox\nmatch from any from local action a\n",
     "2: match option 'from' already specified"),
    ("action a mbox alias <localhost> alias <localhost>\n",
     "1: action option 'alias' already specified"),
    ('filter f proc-exec x user a \\\n user b\n', "2: option 'user' already specified"),
    # --- semantic checks ---
    ("action a maildir alias <localhost> \\\n  virtual <localhost>\n",
     "2: action options 'alias' and 'virtual' are mutually exclusive"),
    ("action a mbox user joe\n", "1: action option 'user' is not allowed with mbox"),
    ("action a forward-only user joe\n",
     "1: action option 'user' is not allowed with forward-only"),
    ("table t mysql:relative.conf\n",
     "1: invalid backend parameter for table 't': the path after 'mysql:' must be absolute"),
    ("table t file:etc/aliases\n",
     "1: invalid backend parameter for table 't': the path after 'file:' must be absolute"),
    ("table t mysql:\n",
     "1: invalid backend parameter for table 't': the path after 'mysql:' must be absolute"),
    ("table s file:/x\naction r relay \\\n  auth <s>\n", "2: relay option 'auth' requires 'host'"),
    ("action r relay backup host smtp://x\n",
     "1: relay options 'backup' and 'host' are mutually exclusive"),
    ("action r relay helo x helo-src <localhost>\n",
     "1: relay options 'helo' and 'helo-src' are mutually exclusive"),
    ("listen on lo auth\n", "1: listen option 'auth' requires tls, tls-require or smtps"),
    ("listen on lo \\\n auth-optional\n",
     "1: listen option 'auth' requires tls, tls-require or smtps"),
    (PKI + "listen on lo pki h\n", "3: listen option 'pki' requires tls, tls-require or smtps"),
    ("listen on lo tls\n", "1: listen option tls, tls-require or smtps requires 'pki'"),
    ("listen on lo smtps\n", "1: listen option tls, tls-require or smtps requires 'pki'"),
    (PKI + "listen on lo tls pki h senders <localhost>\n",
     "3: listen option 'senders' requires 'auth' or 'auth-optional'"),
    ("listen on socket port 25\n", "1: syntax error near 'port'"),
    ("filter a proc-exec x\nfilter c chain { a }\nfilter d chain { c }\n",
     "3: filter chains cannot be nested: 'c'"),
    ("filter a proc-exec x\nfilter c chain { a, a }\n", "2: filter 'a' listed twice"),
    ('proc p "x"\nfilter a proc p\nfilter b proc p\nfilter c chain { a, b }\n',
     "4: proc 'p' used twice in a chain"),
    ("filter a proc-exec x\nfilter c chain { a }\nlisten on lo filter { c }\n",
     "3: filter chains cannot be nested: 'c'"),
    ('\npki h cert "/c"\n', "2: pki 'h' has no key"),
    ('pki h key "/k"\n', "1: pki 'h' has no cert"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[1] for c in CASES])
def test_error_position_and_message(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, "e.conf")
    assert str(info.value) == "e.conf:" + expected
    assert info.value.file == "e.conf"
    assert info.value.line == int(expected.split(":")[0])


def test_chain_of_a_listener_by_name_is_allowed() -> None:
    cfg = parse_string("filter a proc-exec x\nfilter c chain { a }\nlisten on lo filter c\n")
    assert cfg.listeners[0].filters == ["c"]


def test_error_inside_macro_expansion_names_the_use_line() -> None:
    text = 'opts = "port 25 frob"\n\nlisten on lo $opts\n'
    with pytest.raises(ConfigError, match=r"^e\.conf:3: unknown keyword 'frob'$"):
        parse_string(text, "e.conf")


def test_keyword_must_be_quoted_to_be_a_value() -> None:
    with pytest.raises(ConfigError, match=r"^e\.conf:1: syntax error near 'relay'$"):
        parse_string("action relay relay\n", "e.conf")
    assert "relay" in parse_string('action "relay" relay\n').actions


# ---- files and includes -----------------------------------------------------


def test_parse_file_and_missing_file(tmp_path: Path) -> None:
    conf = tmp_path / "smtpd.conf"
    conf.write_text("listen on lo\n\nbogus\n")
    with pytest.raises(ConfigError) as info:
        parse_file(str(conf))
    assert str(info.value) == f"{conf}:3: unknown keyword 'bogus'"
    with pytest.raises(ConfigError, match="cannot open"):
        parse_file(str(tmp_path / "absent.conf"))


def test_include_relative_and_error_position(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    main = tmp_path / "smtpd.conf"
    tables = tmp_path / "sub" / "tables.conf"
    actions = tmp_path / "sub" / "actions.conf"
    main.write_text(
        'include "sub/tables.conf"\nlisten on lo\ninclude "sub/actions.conf"\n'
        'match for any action "local"\n'
    )
    tables.write_text("# tables\ntable aliases file:/etc/aliases")  # no final newline
    actions.write_text('action "local" mbox \\\n   alias <aliases>\n')
    cfg = parse_file(str(main))
    assert cfg.tables["aliases"].where.file == str(tables)
    assert cfg.tables["aliases"].where.line == 2
    assert cfg.actions["local"].where.file == str(actions)
    assert cfg.matches[0].where.file == str(main)
    assert cfg.matches[0].where.line == 4
    # parse order across files is recorded
    seqs = [cfg.tables["aliases"].where.seq, cfg.listeners[0].where.seq,
            cfg.actions["local"].where.seq, cfg.matches[0].where.seq]
    assert seqs == sorted(seqs)

    actions.write_text('action "local" mbox \\\n   alias <nope>\n')
    with pytest.raises(ConfigError) as info:
        parse_file(str(main))
    assert str(info.value) == f"{actions}:2: no such table <nope>"


def test_include_absolute_missing_and_loop(tmp_path: Path) -> None:
    inc = tmp_path / "inc.conf"
    inc.write_text("listen on lo\n")
    cfg = parse_string(f'include "{inc}"\n', "main.conf")
    assert cfg.listeners[0].where.file == str(inc)
    with pytest.raises(ConfigError) as info:
        parse_string('\ninclude "/nonexistent/x.conf"\n', "main.conf")
    assert str(info.value).startswith("main.conf:2: cannot open /nonexistent/x.conf")
    loop = tmp_path / "loop.conf"
    loop.write_text(f'include "{loop.name}"\n')
    with pytest.raises(ConfigError, match=r"loop\.conf:1: include loop"):
        parse_file(str(loop))


def test_include_as_last_line_without_newline(tmp_path: Path) -> None:
    inc = tmp_path / "inc.conf"
    inc.write_text("listen on lo\n")
    cfg = parse_string(f'include "{inc}"')
    assert len(cfg.listeners) == 1


def test_macros_cross_includes(tmp_path: Path) -> None:
    inc = tmp_path / "m.conf"
    inc.write_text('iface = "lo"\n')
    cfg = parse_string(f'include "{inc}"\nlisten on $iface\n', macros={})
    assert cfg.listeners[0].address == "lo"
    cfg = parse_string(f'include "{inc}"\nlisten on $iface\n', macros={"iface": "eth9"})
    assert cfg.listeners[0].address == "eth9"


def test_relative_include_from_string_is_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "x.conf").write_text("listen on lo\n")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = parse_string('include "x.conf"\n')
    finally:
        os.chdir(old)
    assert cfg.listeners[0].where.file == "x.conf"


def test_dedented_multiline_error_line() -> None:
    text = textwrap.dedent(
        """\
        table t { a,
                  b,
                  <c> }
        """
    )
    with pytest.raises(ConfigError, match=r"^e\.conf:3: syntax error near '<'$"):
        parse_string(text, "e.conf")
