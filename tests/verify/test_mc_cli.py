"""``attnverify mc``: output, JSON, plots and argument errors."""

import json

import pytest
from click.testing import CliRunner

from verify.cli import main
from verify.cli_mc import parse_dks


def run(*args):
    return CliRunner().invoke(main, ["mc", *args], catch_exceptions=False)


def test_mc_lists_the_four_experiments():
    out = run("--help")
    assert out.exit_code == 0
    for name in ("variance", "scaled", "projected", "saturation"):
        assert name in out.output


def test_variance_command_writes_json_and_plot(tmp_path):
    j, p = tmp_path / "out" / "v.json", tmp_path / "v.png"
    out = run("variance", "--dk", "1..4", "--samples", "5e3", "--seed", "3", "--json", str(j), "--plot", str(p))
    assert out.exit_code == 0, out.output
    assert "seed=3" in out.output and any(v in out.output for v in ("SUPPORTED", "INCONCLUSIVE", "REFUTED"))
    data = json.loads(j.read_text())
    assert data["experiment"] == "variance" and [pt["d_k"] for pt in data["points"]] == [1, 2, 4]
    assert data["points"][0]["result"]["samples"] == 5000
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_variance_command_refutes_dk_with_non_zero_mean():
    out = run("variance", "--dk", "16", "--samples", "20000", "--seed", "1", "--mean-q", "1", "--std-k", "2")
    assert out.exit_code == 0, out.output
    assert "REFUTED" in out.output and "SUPPORTED" in out.output


def test_scaled_projected_saturation_commands(tmp_path):
    assert run("scaled", "--dk", "4,64", "--samples", "2000", "--seed", "1").exit_code == 0
    out = run("projected", "--dk", "4", "--d-model", "2", "--same-token", "--samples", "20000", "--seed", "1",
              "--dist", "rademacher", "--workers", "2")
    assert out.exit_code == 0, out.output
    out = run("saturation", "--dk", "1,256", "--samples", "500", "--seed", "1", "--keys", "8",
              "--plot", str(tmp_path / "s.png"))
    assert out.exit_code == 0, out.output
    assert "Corolário 4" in out.output and "REFUTED" in out.output
    assert (tmp_path / "s.png").exists()


@pytest.mark.parametrize("args,message", [
    (["variance", "--dk", "0"], "--dk"),
    (["variance", "--dk", "8..2"], "--dk"),
    (["variance", "--samples", "1.5"], "whole number"),
    (["variance", "--dk", "4", "--samples", "1"], "Invalid value for '--samples': expected a whole number >= 2"),
    (["variance", "--dk", "4", "--alpha", "2"], "Invalid value for '--alpha': alpha must lie in (0, 1), got 2.0"),
    (["variance", "--dk", "4", "--rel-error", "-1"], "Invalid value for '--rel-error': rel_error must lie in (0, inf)"),
    (["variance", "--dist", "cauchy"], "cauchy"),
    (["variance", "--dk", "2", "--samples", "100", "--plot", "x.jpg"],
     "Invalid value for '--plot': expected a file name ending in .png, .pdf, .svg; got 'x.jpg'"),
    (["saturation", "--keys", "1"], "--keys"),
])
def test_bad_arguments_are_usage_errors(args, message):
    out = run(*args)
    assert out.exit_code == 2
    assert message in out.output


def test_parse_dks():
    assert parse_dks("1..8") == (1, 2, 4, 8)
    assert parse_dks(("3,3,5", "2..4")) == (3, 5, 2, 4)
    assert parse_dks("3..20") == (3, 6, 12)


def test_margin_option_decides_between_supported_and_inconclusive():
    """The same 2000 samples: the 5% default margin cannot decide, a 50% margin can."""
    from verify.cli_mc import variance_cmd
    from verify.montecarlo.verdict import DEFAULT_MARGIN

    default = next(p.default for p in variance_cmd.params if p.name == "margin")
    assert default == DEFAULT_MARGIN
    args = ["variance", "--dk", "2", "--samples", "2000", "--seed", "1"]
    narrow, wide = run(*args), run(*args, "--margin", "0.5")
    assert "INCONCLUSIVE" in narrow.output and "SUPPORTED" not in narrow.output.split("variance sweep")[0]
    assert "SUPPORTED" in wide.output and "INCONCLUSIVE" not in wide.output
    assert run(*args, "--margin", "0").exit_code == 2


@pytest.mark.parametrize("samples", ["9007199254740993", "18014398509481984", "1e17", "2.5e0", "1000.5"])
def test_a_budget_over_two_to_the_53_or_not_whole_is_refused_before_running(monkeypatch, samples):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail(f"ran with {kw['samples']}"))
    out = run("variance", "--samples", samples)
    assert out.exit_code == 2
    assert "Invalid value for '--samples': expected a whole number >= 2" in out.output


class _Seen(Exception):
    pass


def test_the_largest_budget_reaches_the_sweep_exactly(monkeypatch):
    from verify.montecarlo import experiments

    def seen(**kw):
        raise _Seen(kw["samples"])

    monkeypatch.setattr(experiments, "variance_sweep", seen)
    with pytest.raises(_Seen) as info:
        run("variance", "--samples", "9007199254740992")
    assert info.value.args[0] == 2**53 and type(info.value.args[0]) is int
