"""Conventions every command keeps: exit codes in --help, library argument errors as one line
naming the option (exit 2), option ranges that agree with the checks, shell completion."""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from verify.cli import main

COMMANDS = [["check"], ["derive"], ["report"], ["mc"], ["mc", "variance"], ["mc", "scaled"],
            ["mc", "projected"], ["mc", "saturation"], ["prove"], ["audit"], ["crosscheck"], ["validate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_lists_the_exit_codes(command):
    out = CliRunner().invoke(main, [*command, "--help"]).output
    # validate has its own: its 0 is "every applicable property passed", a FAIL exits 1
    lines = (("0    every applicable property passed", "1    a property failed") if command == ["validate"] else
             ("0    done", "1    findings under --strict, or a check crashed;"))
    for line in (*lines, "2    bad usage", "130  interrupted"):
        assert line in out, (command, out)


def _error_lines(result):
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_samples_range_in_the_help_is_the_range_checked():
    help_text = " ".join(CliRunner().invoke(main, ["mc", "variance", "--help"]).output.split())
    assert "Sample budget per d_k, 2 to 2**53" in help_text
    expected = "Error: Invalid value for '--samples': expected a whole number >= 2 and <= 9,007,199,254,740,992 such as "
    one = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "1"])
    assert one.exit_code == 2
    assert _error_lines(one) == [expected + "100000 or 1e5, got '1'"]
    over = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", str(2**53 + 1)])
    assert over.exit_code == 2
    assert _error_lines(over) == [expected + f"100000 or 1e5, got '{2**53 + 1}': over the largest budget "
                                  "(float64 counts are exact up to 2**53)"]
    two = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "2", "--seed", "1"])
    assert two.exit_code == 0, two.output


@pytest.mark.parametrize("args,option,words", [
    (["--dk", "100000000", "--samples", "10"], "--dk", "over the memory limit of 1 GiB"),  # not the API's memory_limit=
    (["--dk", "4", "--samples", "1e20"], "--samples", "2**53"),
    (["--dk", "4", "--alpha", "0"], "--alpha", "alpha"),
])
def test_library_argument_errors_are_one_line_naming_the_option(args, option, words):
    result = CliRunner().invoke(main, ["mc", "variance", *args])
    assert result.exit_code == 2, result.output
    [line] = _error_lines(result)
    assert line.startswith(f"Error: Invalid value for '{option}': ") and words in line


@pytest.mark.parametrize("exc,code,text", [
    (TypeError("dist must be a str, got int"), 2, "Error: Invalid value for '--dist': dist must be a str"),
    (ValueError("something the library found wrong"), 2, "Error: something the library found wrong"),
    (MemoryError(), 1, "Error: out of memory"),
])
def test_errors_raised_by_a_sweep_are_one_line(monkeypatch, exc, code, text):
    from verify.montecarlo import experiments

    def fail(**kw):
        raise exc

    monkeypatch.setattr(experiments, "variance_sweep", fail)
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2"])
    assert result.exit_code == code
    [line] = _error_lines(result)
    assert line.startswith(text)


def test_inconclusive_verdicts_come_with_their_reason():
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "500", "--seed", "1"])
    assert result.exit_code == 0
    assert "INCONCLUSIVE" in result.output and "would settle it" in " ".join(result.output.split())


def _exe():
    return os.path.join(os.path.dirname(sys.executable), "attnverify")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("words,expected", [
    ("attnverify mc va", "variance"),
    ("attnverify ch", "check"),
    ("attnverify mc variance --di", "--dist"),
    ("attnverify mc variance --dist ra", "rademacher"),
])
def test_bash_completion_as_documented(words, expected):
    """The --help's recipe, run in bash: the completion function fills COMPREPLY."""
    script = (f'eval "$(_ATTNVERIFY_COMPLETE=bash_source {_exe()})"\n'
              f'COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n'
              f'_attnverify_completion {_exe()}\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout.split(), out.stdout
    assert 'eval "$(_ATTNVERIFY_COMPLETE=bash_source attnverify)"' in CliRunner().invoke(main, ["--help"]).output
