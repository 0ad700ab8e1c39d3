"""verify.crosscheck and ``attnverify crosscheck``: every backend present against NumPy float64,
mpmath and SymPy, passing as shipped and failing when a backend (or a reference) is wrong."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from click.testing import CliRunner

import verify.crosscheck as cc
from proofs.derivations.lambdified import symbolic_results
from tests.helpers import backend_params
from verify.cli import main
from verify.validate.result import Status
from verify.validate.tolerance import ABS64, UNIT_ROUNDOFF


@pytest.fixture(scope="module")
def full():
    """The whole crosscheck with the SymPy column, on every backend present (once)."""
    return cc.crosscheck(symbolic=symbolic_results)


@pytest.mark.parametrize("backend", backend_params("numpy", "array_api_strict", "torch"))
def test_every_layer_pass_dtype_and_reference_passes_on(full, backend):
    assert backend in full.backends
    rows = [r for r in full.rows if r.backend == backend]
    seen = {(r.layer, r.quantity, r.dtype, r.reference) for r in rows}
    for layer, passes in cc.PASSES.items():
        for quantity in passes:
            for dtype in ("float64", "float32"):
                for reference in ("float64", "mpmath", "sympy"):
                    if reference == "float64" and backend == "numpy" and dtype == "float64":
                        continue  # the float64 reference itself
                    assert (layer, quantity, dtype, reference) in seen
    bad = [r for r in rows if r.status is not Status.PASS]
    assert not bad, bad
    for r in rows:
        assert 0 <= r.error <= r.bound
        if r.dtype == "float64":
            assert r.bound == ABS64
        else:  # k err(plain) + 16 u: the plain float32 error is a float32-sized, nonzero number
            assert 0 < r.plain_error < 1e-5 and r.bound == pytest.approx(2 * r.plain_error + 16 * UNIT_ROUNDOFF["float32"])


def test_every_option_is_in_a_case():
    options = {key: value for case in cc.CASES for key, value in case.options.items()}
    assert {"bias", "mask", "causal", "window", "softcap", "enable_gqa", "rope", "norm"} <= set(options)
    alignments = {c.options.get("causal") for c in cc.CASES}
    assert {"top_left", "bottom_right"} <= alignments
    assert any(c.sizes.get("Hkv", 0) < c.sizes.get("H", 0) for c in cc.CASES if c.layer in ("mha", "block"))
    assert {c.options["rope"]["style"] for c in cc.CASES if "rope" in c.options} == {"half", "interleaved"}


def test_the_result_is_json_ready(full):
    doc = json.loads(json.dumps(full.to_dict()))
    assert doc["passed"] is True and doc["references"] == ["float64", "mpmath", "sympy"]
    row = doc["rows"][0]
    assert set(row) >= {"layer", "pass", "backend", "dtype", "reference", "status", "error", "bound"}
    assert len(doc["cases"]) == len(cc.CASES) + len(cc.TILED_CASES)
    assert [c["tiled"] for c in doc["cases"]].count(True) == len(cc.TILED_CASES)


# ------------------------------------------------------------------ the tiled tier


def test_the_tiled_tier_runs_the_long_path_against_untiled_float64(full):
    from numerics import _tiled

    tiled = [r for r in full.rows if r.tiled]
    assert {r.layer for r in tiled} == {"sdpa", "mha"}
    assert {r.reference for r in tiled} == {"float64"}  # mpmath and SymPy cannot afford them
    assert ("sdpa", "numpy", "float64") in {(r.layer, r.backend, r.dtype) for r in tiled}  # not its own reference
    assert all(r.passed and 0 <= r.error <= r.bound for r in tiled), [r for r in tiled if not r.passed]
    for case in cc.TILED_CASES:  # above one tile in each direction
        assert case.sizes["N"] > _tiled.BLOCK_Q and case.sizes["M"] > _tiled.BLOCK_K


def _only_when_tiled(change):
    """run_backend with ``change`` applied only when tiling is forced: a bug of the tiled path."""
    from numerics import _tiled

    original = cc.run_backend

    def run(problem, name, dt):
        out = original(problem, name, dt)
        return change(out) if _tiled.MIN_SCORES == 0 else out

    return run


def test_a_bug_only_in_the_tiled_path_fails_its_tiled_rows(monkeypatch):
    monkeypatch.setattr(cc, "run_backend", _only_when_tiled(lambda out: {**out, "dk": out["dk"] * (1 + 1e-9)}))
    result = cc.crosscheck(backends=["numpy"], cases=ONE + cc.TILED_CASES[:1], dtypes=["float64"])
    assert {(r.layer, r.tiled, r.quantity) for r in result.failures} == {("sdpa", True, "dk")}
    assert all(r.status is Status.FAIL and r.error > r.bound for r in result.failures)


def test_a_run_that_skips_the_tiled_path_is_an_error(monkeypatch):
    from numerics import _tiled

    monkeypatch.setattr(_tiled, "use_tiles", lambda p, return_weights: False)
    result = cc.crosscheck(backends=["numpy"], cases=cc.TILED_CASES[:1], dtypes=["float64"])
    assert result.rows and all(r.status is Status.ERROR for r in result.rows)
    assert all("the tiled path did not run" in r.message for r in result.rows)


ONE = (cc.CASES[3],)  # sdpa with bias and softcap: every sdpa pass, cheap


def _wrong(backend: str, dtype: str, change):
    """run_backend with ``change`` applied to one backend and dtype's results."""
    original = cc.run_backend

    def run(problem, name, dt):
        out = original(problem, name, dt)
        return change(out) if (name, dt) == (backend, dtype) else out

    return run


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (8-bit significand), as a result computed in bfloat16 would be."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x8000) & 0xFFFF0000).view(np.float32).astype(np.float64)


def test_a_float32_result_rounded_to_bfloat16_fails_the_rule(monkeypatch):
    monkeypatch.setattr(cc, "run_backend", _wrong("numpy", "float32", lambda out: {**out, "dq": _bf16(out["dq"])}))
    result = cc.crosscheck(backends=["numpy"], cases=ONE)
    failed = {(r.quantity, r.dtype, r.reference) for r in result.failures}
    assert failed == {("dq", "float32", "float64"), ("dq", "float32", "mpmath")}
    assert all(r.status is Status.FAIL and r.error > r.bound for r in result.failures)
    assert not result.passed


def test_a_float64_backend_off_by_1e_9_fails(monkeypatch):
    monkeypatch.setattr(cc, "run_backend", _wrong("array_api_strict", "float64",
                                                  lambda out: {**out, "output": out["output"] * (1 + 1e-9)}))
    result = cc.crosscheck(backends=["numpy", "array_api_strict"], cases=ONE, dtypes=["float64"])
    assert {(r.backend, r.quantity) for r in result.failures} == {("array_api_strict", "output")}
    assert {r.reference for r in result.failures} == {"float64", "mpmath"}


def test_a_backend_that_raises_is_an_error_row_and_the_rest_runs(monkeypatch):
    def boom(out):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(cc, "run_backend", _wrong("array_api_strict", "float32", boom))
    result = cc.crosscheck(backends=["numpy", "array_api_strict"], cases=ONE)
    errors = [r for r in result.rows if r.status is Status.ERROR]
    assert errors and all(r.backend == "array_api_strict" and r.dtype == "float32" for r in errors)
    assert all("kernel exploded" in r.message for r in errors)
    assert all(r.passed for r in result.rows if r not in errors)


def test_a_wrong_sympy_result_fails_its_column():
    def wrong(problem):
        out = dict(symbolic_results(problem))
        out["dv"] = out["dv"] + 1e-6
        return out

    result = cc.crosscheck(backends=["numpy"], cases=ONE, symbolic=wrong)
    assert {(r.quantity, r.reference) for r in result.failures} == {("dv", "sympy")}


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="backends must be among"):
        cc.crosscheck(backends=["jax"], cases=ONE)
    with pytest.raises(ValueError, match="dtypes must be among"):
        cc.crosscheck(backends=["numpy"], cases=ONE, dtypes=["float16"])


# ------------------------------------------------------------------ the command line


def _fast(monkeypatch):
    monkeypatch.setattr(cc, "crosscheck", functools.partial(cc.crosscheck, cases=ONE))


def test_cli_prints_the_table_writes_json_and_exits_0(monkeypatch, tmp_path):
    _fast(monkeypatch)
    path = tmp_path / "out" / "cc.json"
    result = CliRunner().invoke(main, ["crosscheck", "--backend", "numpy", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "attnverify crosscheck" in result.output and "vs sympy" in result.output
    assert "1 problems on numpy" in result.output and "FAIL" not in result.output
    doc = json.loads(path.read_text())
    assert doc["command"] == "crosscheck" and doc["passed"] is True
    assert {r["reference"] for r in doc["rows"]} == {"float64", "mpmath", "sympy"}


def test_cli_exits_1_and_names_the_failing_line(monkeypatch):
    _fast(monkeypatch)
    monkeypatch.setattr(cc, "run_backend", _wrong("numpy", "float32", lambda out: {**out, "dk": _bf16(out["dk"])}))
    result = CliRunner().invoke(main, ["crosscheck", "--backend", "numpy", "--no-sympy"])
    assert result.exit_code == 1, result.output
    assert "FAIL sdpa dk on numpy float32 vs float64: case bias+softcap" in result.output
    assert "vs sympy" not in result.output


def test_cli_table_says_what_its_numbers_mean_and_shows_a_failing_tiled_line(monkeypatch):
    monkeypatch.setattr(cc, "crosscheck", functools.partial(cc.crosscheck, cases=ONE + cc.TILED_CASES[:1]))
    monkeypatch.setattr(cc, "run_backend", _only_when_tiled(lambda out: {**out, "output": out["output"] * (1 + 1e-9)}))
    result = CliRunner().invoke(main, ["crosscheck", "--backend", "numpy", "--no-sympy"], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    out = result.output
    assert "(reference)" in out and "#1" in out and "#2" in out  # NumPy float64's own line; the worst problems
    assert "max |result - reference| / max |reference|" in out and "ABS64 = 1e-12" in out and "u = 2^-24" in out
    assert "#1 sdpa bias+softcap" in out and "#2 sdpa long: bottom_right+bias (N=300, M=400)" in out
    line = next(line for line in out.splitlines() if line.startswith("sdpa tiled") and "output" in line
                and "float64" in line)  # 1e-9 is far below float32's bound: only float64 fails
    assert "1.0e-09 > 1.0e-12 #2" in line and line.rstrip().endswith("FAIL"), out
    assert "FAIL sdpa tiled output on numpy float64 vs float64: case long: bottom_right+bias" in out


def test_cli_json_to_stdout(monkeypatch):
    _fast(monkeypatch)
    result = CliRunner().invoke(main, ["crosscheck", "--backend", "numpy", "--no-sympy", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["backends"] == ["numpy"]
    assert "attnverify crosscheck" in result.stderr
