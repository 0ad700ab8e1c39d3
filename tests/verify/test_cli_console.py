"""Property tests of the CLI's pieces: tables at any width, counts and key widths from any text."""

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from verify._console import VERDICTS, print_table, verdict_text
from verify.cli.mc import COUNT, parse_dks

_words = st.text(alphabet="abcdefghij[]/()=.,;: 0123456789", min_size=0, max_size=60)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(20, 200),
       rows=st.lists(st.tuples(_words, st.sampled_from(VERDICTS), _words), min_size=1, max_size=4))
def test_tables_never_cut_a_verdict_nor_overflow_the_console(width, rows):
    console = Console(width=width, record=True, color_system=None)
    with console.capture() as captured:
        print_table(console, "title [x]", ("claim", "verdict", "evidence"),
                    [(a, verdict_text(v), b) for a, v, b in rows], verdict_columns=("verdict",), wide=("evidence",))
    text = captured.get()
    assert "…" not in text
    assert max(map(len, text.splitlines())) <= width
    for _, verdict, _ in rows:
        assert verdict in text
    flat = "".join(text.split())
    for a, _, b in rows:  # every character of every cell is printed (in order, when stacked)
        for cell in (a, b):
            assert all(ch in flat for ch in cell.replace(" ", ""))


@given(st.one_of(st.text(max_size=12), st.integers(-5, 10**6), st.floats(allow_nan=True)))
def test_counts_parse_or_fail_with_a_usage_error(value):
    try:
        n = COUNT.convert(value, None, None)
    except click.BadParameter as exc:
        assert "expected a whole number >= 2" in exc.message
    else:
        assert isinstance(n, int) and n >= 2


@given(st.text(alphabet="0123456789.,- x", max_size=14))
def test_key_widths_parse_or_fail_naming_dk(text):
    try:
        dks = parse_dks(text)
    except click.BadParameter as exc:
        assert exc.param_hint == "--dk"
    else:
        assert dks and all(isinstance(d, int) and d >= 1 for d in dks) and len(set(dks)) == len(dks)


@pytest.mark.parametrize("value,expected", [("1e5", 100_000), ("1_000", 1000), (2, 2), ("2.0", 2)])
def test_counts_accept_the_documented_spellings(value, expected):
    assert COUNT.convert(value, None, None) == expected


@pytest.mark.parametrize("compact", [False, True])
def test_a_verdict_column_header_wraps_rather_than_being_cut(compact):
    console = Console(width=100, color_system=None)
    with console.capture() as captured:
        print_table(console, "t", ("d_k", "naive verdict"), [("1", verdict_text("REFUTED"))],
                    verdict_columns=("naive verdict",), compact=compact)
    words = captured.get().split()
    assert "naive" in words and "verdict" in words and "REFUTED" in words


@pytest.mark.parametrize("value,expected", [
    ("9007199254740992", 2**53), ("9007199254740991", 2**53 - 1), ("1e15", 10**15), (2**53, 2**53),
])
def test_counts_are_read_exactly_up_to_two_to_the_53(value, expected):
    n = COUNT.convert(value, None, None)
    assert n == expected and type(n) is int


@pytest.mark.parametrize("value,why", [
    ("9007199254740993", "over the largest budget"),  # a float reads it as 2**53
    (2**53 + 1, "over the largest budget"),
    ("1e16", "over the largest budget"),
    ("1e999999999", "over the largest budget"),  # refused at once, not expanded
    ("2.0000000000000001", "not a whole number"),  # a float reads it as 2.0
    ("100000.00000000001", "not a whole number"),
    ("1e-1", "not a whole number"),
    ("nan", "not a whole number"),
])
def test_counts_over_two_to_the_53_or_not_whole_are_refused(value, why):
    with pytest.raises(click.BadParameter, match="expected a whole number >= 2") as info:
        COUNT.convert(value, None, None)
    assert why in info.value.message


@given(st.integers(-3, 2**60))
def test_any_written_integer_is_read_exactly(n):
    for text in (str(n), f"{n}e0", f"{n}.000"):
        if 2 <= n <= 2**53:
            assert COUNT.convert(text, None, None) == n
        else:
            with pytest.raises(click.BadParameter):
                COUNT.convert(text, None, None)


def test_the_cli_limit_is_the_engines():
    from verify.cli.mc import MAX_SAMPLES
    from verify.montecarlo.engine import MAX_SAMPLES as ENGINE

    assert MAX_SAMPLES == ENGINE == 2**53
