"""`attnverify validate MODULE:ATTR`: a file path and a module (torch's SDPA), the table, --json,
exit 0 / 1, bad targets named (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import OPTIONAL_BACKENDS
from verify.cli import main

MUTANTS = Path(__file__).resolve().parent / "mutants"


def validate(*args: str, cwd=None):
    return CliRunner().invoke(main, ["validate", *map(str, args)], env={"COLUMNS": "220"})


def test_a_file_path_with_a_faulty_function_exits_1_and_names_the_fault(tmp_path):
    result = validate(f"{MUTANTS / 'sdpa.py'}:causal_bottom_right", "--max-examples", "8")
    assert result.exit_code == 1, result.output
    assert "causal alignment is bottom-right" in result.output
    assert "FAIL" in result.output and "FAILED; faults named: causal:bottom_right" in result.output


def test_a_correct_file_exits_0_and_writes_json(tmp_path):
    out = tmp_path / "sub" / "v.json"
    result = validate(f"{MUTANTS / 'correct.py'}:online_softmax", "--max-examples", "8", "--json", out)
    assert result.exit_code == 0, result.output
    assert "every applicable property passed" in result.output
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["kind"] == "sdpa" and doc["tool"] == "attnverify"
    statuses = {p["name"]: p["status"] for p in doc["properties"]}
    assert statuses["causality"] == "PASS" and statuses["gqa"] == "NOT APPLICABLE"


def test_torch_sdpa_from_the_command_line_in_a_subprocess(tmp_path):
    pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    run = subprocess.run([sys.executable, "-m", "verify.cli", "validate",
                          "torch.nn.functional:scaled_dot_product_attention", "--max-examples", "6",
                          "--dtype", "float32", "--json", "-"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["settings"]["adapter"] == "torch.nn.functional.scaled_dot_product_attention"
    assert {p["name"]: p["status"] for p in doc["properties"]}["gradients"] == "PASS"
    assert "gradients" in run.stderr  # the table went to stderr


def test_a_module_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "myattn.py").write_text(
        "import numpy as np\n"
        "def attention(q, k, v):\n"
        "    s = q @ np.swapaxes(k, -1, -2)\n"  # no 1/sqrt(d_k)
        "    e = np.exp(s - s.max(-1, keepdims=True))\n"
        "    return e / e.sum(-1, keepdims=True) @ v\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = validate("myattn:attention", "--max-examples", "8", "--dtype", "float64")
    assert result.exit_code == 1, result.output
    assert "the 1/sqrt(d_k) is missing" in result.output


@pytest.mark.parametrize("target, words", [
    ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
    ("sdpa.py:nope", "has no attribute 'nope'"),
    ("sdpa.py:MUTANTS", "is a list, not a callable"),
    ("sdpa.py:MUTANT_COUNT", "is an int, not a callable"),
    ("sdpa.py:no_scale:extra", "too many colons in 'sdpa.py:no_scale:extra'"),
    ("justaname", "expected MODULE:ATTR"),
    ("missing.py:f", "no such file 'missing.py'"),
])
def test_bad_targets_are_named(target, words, monkeypatch):
    monkeypatch.chdir(MUTANTS)
    result = validate(target)
    assert result.exit_code == 2, result.output
    assert "Invalid value for 'MODULE:ATTR'" in result.output and words in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("source, words", [("raise RuntimeError('half written')\n", "RuntimeError: half written"),
                                           ("def f(q, k, v:\n", "SyntaxError")])
def test_a_file_that_cannot_be_imported_is_bad_usage(tmp_path, source, words):
    # as an unknown module is (exit 2), not a failed property (exit 1)
    bad = tmp_path / "broken.py"
    bad.write_text(source)
    result = validate(f"{bad}:f")
    assert result.exit_code == 2, result.output
    assert "importing" in result.output and words in result.output and "Traceback" not in result.output


def test_validate_help_states_its_own_exit_codes():
    out = CliRunner().invoke(main, ["validate", "--help"]).output
    assert "1    a property failed" in out and "a REFUTED claim" not in out


@pytest.mark.parametrize("backend", ["jax", "cupy", "array_api_strict", "torch"])
def test_a_backend_that_is_not_installed_is_bad_usage_up_front(backend, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    result = validate(f"{MUTANTS / 'correct.py'}:online_softmax", "--backend", backend)
    assert result.exit_code == 2, result.output
    assert f"backend '{backend}' is not installed (pip install" in result.output
    assert "ERROR" not in result.output and "Traceback" not in result.output


def test_ctrl_c_stops_after_the_property_in_progress(tmp_path):
    target = tmp_path / "interrupting.py"
    target.write_text(
        "import signal\n"
        "from tests.verify.mutants.correct import online_softmax\n"
        "calls = []\n"
        "def attention(q, k, v, mask=None):\n"
        "    if not calls:\n"
        "        signal.raise_signal(signal.SIGINT)\n"  # Ctrl-C during the first property
        "    calls.append(1)\n"
        "    return online_softmax(q, k, v, mask=mask)\n")
    out = tmp_path / "v.json"
    result = validate(f"{target}:attention", "--max-examples", "5", "--json", out)
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "interrupted: not run:" in result.output
    assert "INTERRUPTED" in result.output and "every applicable property passed" not in result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["incomplete"] is True
    assert doc["incomplete"] is True and doc["passed"] is False and "gradients" in doc["not_run"]
    assert [p["name"] for p in doc["properties"]] == ["agreement"]  # the property in progress finished
    assert "gradients" in doc["settings"]["not_run"]


def test_the_example_label_says_whether_hypothesis_shrank_it(tmp_path):
    def validate(*args):  # a table wide enough that no diagnosis wraps
        return CliRunner().invoke(main, ["validate", *map(str, args)], env={"COLUMNS": "3000"})

    # sdpa's agreement searches: its failure is the smallest hypothesis shrank to
    sdpa = validate(f"{MUTANTS / 'sdpa.py'}:no_scale", "--max-examples", "8", "--json", tmp_path / "s.json")
    assert sdpa.exit_code == 1, sdpa.output
    agreement = {p["name"]: p for p in json.loads((tmp_path / "s.json").read_text())["properties"]}["agreement"]
    assert agreement["status"] == "FAIL" and agreement["shrunk"] is True
    assert "smallest example (shrunk by hypothesis)" in sdpa.output
    # kind mha runs fixed problems: the example is reported as the failing one, never "smallest"
    mha = validate(f"{MUTANTS / 'mha.py'}:scaled_by_d_model", "--kind", "mha", "--json", tmp_path / "m.json")
    assert mha.exit_code == 1, mha.output
    failed = [p for p in json.loads((tmp_path / "m.json").read_text())["properties"] if p["status"] == "FAIL"]
    assert failed and all(p["shrunk"] is False for p in failed)
    assert "failing example:" in mha.output and "smallest example" not in mha.output


def test_a_function_needing_more_than_q_k_v_is_refused_up_front(tmp_path):
    target = tmp_path / "raw.py"
    target.write_text("def raw(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):\n"
                      "    raise AssertionError('never called')\n")
    result = validate(f"{target}:raw")
    assert result.exit_code == 2, result.output
    assert "also needs value, attention_mask, scaling (no default)" in " ".join(result.output.split())
    assert "ERROR" not in result.output


def test_the_candidates_warnings_are_counted_once_not_printed(tmp_path):
    target = tmp_path / "warns.py"
    target.write_text("import warnings\n"
                      "from tests.verify.mutants.correct import online_softmax\n"
                      "def attention(q, k, v):\n"
                      "    warnings.warn('overflow in exp', RuntimeWarning)\n"
                      "    return online_softmax(q, k, v)\n")
    out = tmp_path / "v.json"
    result = validate(f"{target}:attention", "--max-examples", "3", "--dtype", "float64", "--json", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("overflow in exp") == 1 and "warnings from the candidate (first: RuntimeWarning" \
        in result.output
    assert json.loads(out.read_text())["candidate_warnings"] > 1


def test_a_module_is_said_to_be_put_in_eval_mode(tmp_path):
    torch = pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    target = tmp_path / "m.py"
    target.write_text("import torch\nattn = torch.nn.MultiheadAttention(8, 2, dropout=0.1)\n")
    out = tmp_path / "v.json"
    result = validate(f"{target}:attn", "--kind", "mha", "--max-examples", "3", "--json", out)
    assert torch and "module put in eval mode for the battery" in result.output
    assert "eval mode" in json.loads(out.read_text())["settings"]["module_mode"]


def test_a_timeout_example_is_labelled_as_the_call_in_progress(tmp_path):
    target = tmp_path / "spins.py"
    target.write_text("def attention(q, k, v):\n    while True:\n        pass\n")
    result = validate(f"{target}:attention", "--time-limit", "0.3", "--dtype", "float64")
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "TIMEOUT" in text
    assert "the call in progress (not shrunk): q=" in text and "smallest example" not in text


def test_ctrl_c_after_the_last_property_leaves_a_complete_result(monkeypatch):
    import signal

    import verify.validate as api

    real = api.validate

    def battery_then_ctrl_c(fn, kind, **kw):
        result = real(fn, kind, **{**kw, "properties": ["agreement"], "max_examples": 3})
        signal.raise_signal(signal.SIGINT)  # arrives once every property has run
        return result

    monkeypatch.setattr(api, "validate", battery_then_ctrl_c)
    result = validate(f"{MUTANTS / 'correct.py'}:online_softmax")
    assert result.exit_code == 0, result.output
    assert "the run is complete" in result.output and "every applicable property passed" in result.output
