"""``attnverify mc``: output, JSON, plots and argument errors."""

import json

import pytest
from click.testing import CliRunner

from verify.cli import main
from verify.cli.mc import parse_dks


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
    flat = " ".join(out.output.split())  # the table wraps at the terminal's width
    assert "REFUTED unscaled, the softmax Jacobian in the scores" in flat and "source: jacobian-raw-grows" in flat
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
    from verify.cli.mc import variance_cmd
    from verify.montecarlo.verdict import DEFAULT_MARGIN

    default = next(p.default for p in variance_cmd.params if p.name == "margin")
    assert default == DEFAULT_MARGIN
    args = ["variance", "--dk", "2", "--samples", "2000", "--seed", "1"]
    narrow, wide = run(*args), run(*args, "--margin", "0.5")
    assert "INCONCLUSIVE" in narrow.output and "SUPPORTED" not in narrow.output.split("variance sweep")[0]
    assert "SUPPORTED" in wide.output and "INCONCLUSIVE" not in wide.output
    assert run(*args, "--margin", "0").exit_code == 2
    assert run(*args, "--margin", "1").exit_code == 2  # a band reaching 0 would make "equal" meaningless


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


@pytest.mark.parametrize("command", ["variance", "scaled"])
@pytest.mark.parametrize("option", ["--std-q", "--std-k"])
@pytest.mark.parametrize("value", ["0", "-0.0", "-1"])
def test_a_std_must_be_positive_with_clicks_own_message(monkeypatch, command, option, value):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail("the sweep ran"))
    out = run(command, "--dk", "2", "--samples", "100", option, value)
    assert out.exit_code == 2
    assert f"Invalid value for '{option}'" in out.output and "is not in the range x>0" in out.output
    assert "abs_margin" not in out.output


def test_positive_stds_run():
    out = run("variance", "--dk", "2", "--samples", "2000", "--seed", "1", "--std-q", "1e-3", "--std-k", "0.5")
    assert out.exit_code == 0, out.output
    assert "std_q=0.001" in out.output


def test_stds_whose_variance_underflows_are_a_usage_error_without_api_names(monkeypatch):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail("the sweep ran"))
    out = run("variance", "--dk", "2", "--samples", "100", "--std-q", "1e-200", "--std-k", "1e-200")
    assert out.exit_code == 2
    assert "Invalid value for '--std-q'" in out.output and "underflows to 0" in out.output
    assert "abs_margin" not in out.output


def _cli_message(exc):
    from verify.cli.mc import API_ONLY, _usage_error

    message = _usage_error(exc).format_message()
    named = [name for name in API_ONLY if name in message]
    return message, named


def test_the_librarys_zero_theta0_message_is_reworded_for_the_command_line():
    """The library's own message (an API caller's advice: 'pass abs_margin=') never reaches a CLI user."""
    from verify.montecarlo import experiments

    with pytest.raises(ValueError, match="abs_margin") as info:
        experiments.variance_sweep((2,), std_q=1e-200, std_k=1e-200, samples=100, seed=1, workers=1)
    message, named = _cli_message(info.value)
    assert named == [] and "predicted value is 0" in message and "--std-q" in message


def test_the_librarys_memory_messages_name_no_api_argument():
    from types import SimpleNamespace

    from verify.montecarlo import engine

    sampler = SimpleNamespace(name="big", params={}, elements_per_sample=2**27)  # 1 GiB per sample
    cases = [
        dict(block_size=1, block_given=False, workers=None, n_blocks=1, limit=2**20),  # one sample cannot fit
        dict(block_size=64, block_given=True, workers=None, n_blocks=1, limit=2**31),  # the block cannot
        dict(block_size=1, block_given=False, workers=8, n_blocks=8, limit=2**31),  # the workers cannot
    ]
    for case in cases:
        with pytest.raises(ValueError, match="memory_limit") as info:
            engine._fit_memory(sampler, **case)
        message, named = _cli_message(info.value)
        assert named == [], message
        assert "memory limit of" in message


@pytest.mark.parametrize("args", [
    ["variance", "--dk", "100000000"],
    ["projected", "--dk", "100000", "--d-model", "100000"],
    ["saturation", "--dk", "10000000", "--keys", "100"],
])
def test_a_width_over_the_memory_limit_is_refused_without_api_names(args):
    out = run(*args, "--samples", "100")
    assert out.exit_code == 2 and "Invalid value for '--dk'" in out.output
    assert "memory limit of 1 GiB" in out.output and "fits" in out.output
    assert not any(name in out.output for name in ("memory_limit", "block_size"))


def _rows_of(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()]


@pytest.mark.parametrize("command", ["variance", "scaled", "projected"])
@pytest.mark.parametrize("columns", ["80", "160"])
def test_every_verdict_is_printed_next_to_its_estimate_interval_and_predicted_value(tmp_path, command, columns):
    """The mean's verdict too: its estimate and interval are in the row that shows it, not only in --json."""
    from verify.montecarlo.results import format_number as fmt

    out = tmp_path / "r.json"
    result = CliRunner(env={"COLUMNS": columns}).invoke(
        main, ["mc", command, "--dk", "1,16", "--samples", "20000", "--seed", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows_of(result.output)
    assert not any(row and row[0] in ("d_k:", "E:", "Var:") for row in rows)  # tables, not 'column: value' lists
    assert max(map(len, result.output.splitlines()[:12])) <= int(columns)
    doc = json.loads(out.read_text())
    statistics = set()
    for point in doc["points"]:
        for check in point["checks"]:
            e = check["estimate"]
            digits = 5 if e["statistic"] == "variance" else 4
            low, high = e["interval"]
            cells = [str(point["d_k"]), fmt(e["estimate"], digits), f"[{fmt(low, 4)},", f"{fmt(high, 4)}]",
                     fmt(check["theta0"]), check["verdict"]]
            assert any(all(c in row for c in cells) for row in rows), (cells, result.output)
            statistics.add(e["statistic"])
    assert statistics == {"variance", "mean"}
