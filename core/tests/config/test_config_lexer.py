"""The smtpd.conf tokenizer: quoting, continuations, comments, macros, lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider.config import parse_string
from mailrider.config.lexer import ARROW, EOF, NL, STRING, WORD, Lexer, Token
from mailrider.errors import ConfigError


def lex(text: str, macros: dict[str, str] | None = None) -> list[Token]:
    table = macros or {}
    return list(Lexer(text, "t.conf", table.get).tokens())


def words(text: str, macros: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    return [(t.kind, t.value, t.line) for t in lex(text, macros) if t.kind != NL]


def test_words_punctuation_and_lines() -> None:
    toks = words("table t { a, b = c }\nlisten on lo0 <x> !tls\n")
    assert toks == [
        (WORD, "table", 1), (WORD, "t", 1), ("{", "{", 1), (WORD, "a", 1), (",", ",", 1),
        (WORD, "b", 1), ("=", "=", 1), (WORD, "c", 1), ("}", "}", 1),
        (WORD, "listen", 2), (WORD, "on", 2), (WORD, "lo0", 2), ("<", "<", 2),
        (WORD, "x", 2), (">", ">", 2), ("!", "!", 2), (WORD, "tls", 2),
    ]


def test_arrow_is_one_token() -> None:
    # OpenSMTPD's ARROW: "=>" without a blank inside; "= >" stays two tokens
    assert words('a => b "c"=>d e = > f') == [
        (WORD, "a", 1), (ARROW, "=>", 1), (WORD, "b", 1), (STRING, "c", 1), (ARROW, "=>", 1),
        (WORD, "d", 1), (WORD, "e", 1), ("=", "=", 1), (">", ">", 1), (WORD, "f", 1),
    ]


def test_words_keep_colons_slashes_and_dots() -> None:
    toks = words("file:/etc/mail/aliases :: 35M smtp+tls://a@b:587 lmtp:9876")
    assert [v for _, v, _ in toks] == [
        "file:/etc/mail/aliases", "::", "35M", "smtp+tls://a@b:587", "lmtp:9876",
    ]


def test_word_cannot_start_with_slash() -> None:
    # OpenSMTPD: arguments not starting with a letter/digit must be quoted
    toks = words("cert /etc/x")
    assert toks[1] == ("/", "/", 1)
    with pytest.raises(ConfigError, match=r"^t\.conf:1: syntax error near '/'$"):
        parse_string('pki h cert /etc/x\n', "t.conf")


def test_quotes_double_and_single() -> None:
    toks = words("\"a b\" 'c \"d\"' \"it\\\"s\" '.*\\.dyn\\..*'")
    assert toks == [
        (STRING, "a b", 1), (STRING, 'c "d"', 1), (STRING, 'it"s', 1), (STRING, ".*\\.dyn\\..*", 1),
    ]


def test_quoted_keyword_is_a_string() -> None:
    toks = lex('"listen"')
    assert toks[0].kind == STRING


def test_unterminated_quote_reports_its_start_line() -> None:
    with pytest.raises(ConfigError, match=r"^t\.conf:2: unterminated quoted string$"):
        lex('a\n"never closed\nmore\n')


def test_continuation_keeps_line_numbers() -> None:
    text = "a b \\\n  c\nd\ne \\\n\\\n f\ng\n"
    toks = [(t.kind, t.value, t.line) for t in lex(text)]
    assert toks == [
        (WORD, "a", 1), (WORD, "b", 1), (WORD, "c", 2), (NL, "\n", 2),
        (WORD, "d", 3), (NL, "\n", 3),
        (WORD, "e", 4), (WORD, "f", 6), (NL, "\n", 6),
        (WORD, "g", 7), (NL, "\n", 7),
    ]


def test_continuation_inside_quotes() -> None:
    toks = words('"one \\\n  two" x\n')
    assert toks == [(STRING, "one   two", 1), (WORD, "x", 2)]


def test_comments() -> None:
    toks = words("a # comment { } \"\nb#c\n'#not' # x\n")
    assert toks == [(WORD, "a", 1), (WORD, "b", 2), (STRING, "#not", 3)]


def test_comment_continuation_swallows_next_line() -> None:
    # OpenSMTPD reads comments through its continuation handling
    toks = words("# listen on all \\\nlisten on lo\nx\n")
    assert toks == [(WORD, "x", 3)]


def test_macro_expansion_retokenizes() -> None:
    toks = words("listen on $a tls\n", {"a": "lo0 port 25 filter { f1, f2 }"})
    assert [v for _, v, _ in toks] == [
        "listen", "on", "lo0", "port", "25", "filter", "{", "f1", ",", "f2", "}", "tls",
    ]
    assert {line for _, _, line in toks} == {1}


def test_macro_not_expanded_inside_quotes_or_words() -> None:
    toks = words('"$a" b$a\n', {"a": "X"})
    assert toks == [(STRING, "$a", 1), (WORD, "b$a", 1)]


def test_undefined_macro() -> None:
    with pytest.raises(ConfigError, match=r"^t\.conf:2: macro 'nope' not defined$"):
        lex("a\nlisten on $nope\n")


def test_macro_value_is_not_expanded_again() -> None:
    toks = words("$a\n", {"a": "$b", "b": "x"})
    # "$" then the word "b": the value's "$" is not a macro reference
    assert toks == [("$", "$", 1), (WORD, "b", 1)]


def test_eof_token_only_from_parser() -> None:
    assert all(t.kind != EOF for t in lex("a\n"))


def test_file_macros_and_cli_override() -> None:
    text = 'p = "2525"\nlisten on 127.0.0.1 port $p\n'
    assert parse_string(text).listeners[0].port == 2525
    cfg = parse_string(text, macros={"p": "2626"})
    assert cfg.listeners[0].port == 2626
    assert cfg.macros["p"] == "2626"


def test_unquoted_macro_value_and_multiword_macro() -> None:
    # corpus file 04: unquoted value, and a macro holding several options
    text = (
        "ip4=192.0.2.1\n"
        'opts = "mask-src \\\n   tag T"\n'
        "listen on $ip4 port 25 $opts\n"
    )
    cfg = parse_string(text)
    listener = cfg.listeners[0]
    assert (listener.address, listener.port, listener.mask_src, listener.tag) == (
        "192.0.2.1", 25, True, "T",
    )
    assert cfg.macros == {"ip4": "192.0.2.1", "opts": "mask-src    tag T"}


def test_macro_used_before_definition_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^<string>:1: macro 'p' not defined$"):
        parse_string('listen on lo port $p\np = "25"\n')


def test_macro_named_like_a_keyword() -> None:
    # a reserved word as a macro name (OpenSMTPD refuses it; we accept it,
    # as the built-in default configuration uses "port")
    cfg = parse_string('port = "2525"\nlisten on lo port $port\n')
    assert cfg.listeners[0].port == 2525
    with pytest.raises(ConfigError, match=r"^<string>:1: syntax error near '='$"):
        parse_string('= "x"\n')


_safe_word = st.text(
    alphabet=st.sampled_from("abcxyz019_:.-@+/"), min_size=1, max_size=12
).filter(lambda w: w[0].isalnum() or w[0] in "_:")


@given(st.lists(st.lists(_safe_word, min_size=1, max_size=4), min_size=1, max_size=6))
def test_property_lines_survive_continuations(lines: list[list[str]]) -> None:
    # every word written on physical line N is reported on line N, whether
    # the lines are joined by continuations or not
    text = " \\\n".join(" ".join(ws) for ws in lines) + "\n"
    toks = [t for t in lex(text) if t.kind == WORD]
    expected = [(w, i + 1) for i, ws in enumerate(lines) for w in ws]
    assert [(t.value, t.line) for t in toks] == expected


@given(st.text(alphabet=st.characters(blacklist_characters="\"\\\n\0"), max_size=30))
def test_property_quoted_strings_round_trip(s: str) -> None:
    toks = lex('"' + s + '"')
    assert [(t.kind, t.value) for t in toks] == [(STRING, s)]
