"""kind="mha" and kind="block" of the validate battery, both directions: every mutant FAILS with its
diagnosis named, every correct implementation PASSES (no false alarms)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from numerics import multi_head_attention, transformer_block
from tests.helpers import OPTIONAL_BACKENDS, backend_params, load_backend
from tests.verify.mutants import block as block_mutants
from tests.verify.mutants import mha as mha_mutants
from verify.validate import Status, validate
from verify.validate.modules import as_block_candidate, as_mha_candidate

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


def _table(result) -> str:
    return "\n".join(f"{p.name}: {p.status} | {p.diagnosis}" for p in result.properties)


def _assert_passes(result):
    assert result.passed, _table(result)
    assert result["agreement"].status is Status.PASS
    assert not result.faults


# ------------------------------------------------------------------ mha: correct implementations

@pytest.mark.parametrize("backend", backend_params("numpy", "array_api_strict", "torch", "cupy"))
def test_numerics_mha_passes_on_each_backend(backend):
    if backend == "cupy":
        load_backend("cupy")  # skips without a CUDA device
    result = validate(multi_head_attention, kind="mha", backend=backend)
    _assert_passes(result)
    # numerics takes memory, mask and causal: those properties ran, they were not skipped
    for name in ("masks", "cross-attention", "output projection", "head independence"):
        assert result[name].status is Status.PASS, _table(result)


@needs_torch
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_multihead_attention_passes(batch_first):
    import torch

    torch.manual_seed(0)
    result = validate(torch.nn.MultiheadAttention(8, 2, batch_first=batch_first), kind="mha")
    _assert_passes(result)
    assert result["attention weights"].status is Status.PASS  # need_weights=True: head-averaged weights
    assert result["masks"].status is Status.PASS  # attn_mask True = blocked, negated by the adapter


@needs_torch
def test_torch_multihead_attention_factory_and_kdim_pass():
    import torch

    _assert_passes(validate(lambda: torch.nn.MultiheadAttention(16, 4), kind="mha"))
    result = validate(torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True), kind="mha")
    _assert_passes(result)  # separate q/k/v_proj_weight, keys from a memory of width 6


@needs_torch
def test_seed002_multiheadattention_class_passes():
    from proofs.catalogue._document_code import seed002_class

    _, cls = seed002_class("MultiHeadAttention")
    result = validate(lambda: cls(8, 2), kind="mha")
    _assert_passes(result)
    assert result["cross-attention"].status is Status.PASS  # forward(query, key, value)


@needs_torch
def test_packed_torch_mha_written_differently_passes():
    from tests.verify.torch_implementations import PackedMHA

    _assert_passes(validate(PackedMHA(12, 3), kind="mha"))


@needs_torch
def test_nanogpt_causal_self_attention_declared_causal_passes_and_undeclared_fails():
    from tests.verify.torch_implementations import CausalSelfAttention

    declared = validate(as_mha_candidate(CausalSelfAttention(), causal=True), kind="mha")
    _assert_passes(declared)
    undeclared = validate(CausalSelfAttention(), kind="mha")
    assert undeclared["agreement"].status is Status.FAIL  # compared with non-causal attention it must differ
    assert "causal mask applied though none was asked for" in undeclared["agreement"].diagnosis
    assert undeclared.faults == ("mha:unasked-causal",)
    # its gradients are those of causal attention: not judged against non-causal ones, never a second fault
    assert undeclared["gradients"].status is Status.NOT_APPLICABLE, _table(undeclared)
    assert declared["gradients"].status is Status.PASS, _table(declared)


# ------------------------------------------------------------------ mha: mutants

@pytest.mark.parametrize("name", sorted(mha_mutants.MUTANTS))
def test_mha_mutant_fails_with_its_diagnosis(name):
    get, kwargs, words, prop = mha_mutants.MUTANTS[name]
    if get is mha_mutants.prunable_from_document and not HAS_TORCH:
        pytest.skip(f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    candidate = get()
    if kwargs:
        candidate = as_mha_candidate(candidate, **kwargs)
    result = validate(candidate, kind="mha")
    assert not result.passed, _table(result)
    assert result[prop].status is Status.FAIL, _table(result)
    assert words in result[prop].diagnosis, _table(result)
    assert result.faults, "a named fault carries its code"


@pytest.mark.parametrize("kind, name", [("mha", n) for n in sorted(mha_mutants.REPEAT_MUTANTS)]
                         + [("block", n) for n in sorted(block_mutants.REPEAT_MUTANTS)])
def test_batch_and_determinism_mutants_fail_with_their_fault(kind, name):
    mutants = mha_mutants if kind == "mha" else block_mutants
    fn, prop, code = mutants.REPEAT_MUTANTS[name]
    result = validate(fn, kind=kind, properties=["batch independence", "determinism"])
    assert result[prop].status is Status.FAIL, _table(result)
    assert result[prop].fault == code, _table(result)
    assert result[prop].measurements and not result[prop].measurements[-1].ok
    # one fault, one name: a nondeterministic candidate's batch check names nondeterminism, not mixing
    assert result.faults == (code,), _table(result)
    if code == "batch:mixed":
        assert result["determinism"].status is Status.PASS, _table(result)


@needs_torch
@pytest.mark.parametrize("name", sorted(mha_mutants.GRADIENT_MUTANTS))
def test_gradient_mutants_fail_with_their_fault(name):
    make, code, words = mha_mutants.GRADIENT_MUTANTS[name]
    result = validate(make(), kind="mha")
    assert result["agreement"].status is Status.PASS, _table(result)  # the forward is right
    grads = result["gradients"]
    assert grads.status is Status.FAIL and grads.fault == code, _table(result)
    assert words in grads.diagnosis, _table(result)
    # the gradients that do not depend on the fault are reported right: dw_v and dw_o
    assert "right: " in grads.diagnosis and "dw_v" in grads.diagnosis.split("right: ")[1], grads.diagnosis
    assert "dw_o" in grads.diagnosis.split("right: ")[1], grads.diagnosis


@needs_torch
@pytest.mark.parametrize("make", ["multihead", "multihead batch_first", "projection module"])
def test_correct_torch_modules_pass_the_gradients(make):
    import torch

    torch.manual_seed(0)
    module = {"multihead": lambda: torch.nn.MultiheadAttention(8, 2),
              "multihead batch_first": lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True),
              "projection module": mha_mutants.projection_module}[make]()
    result = validate(module, kind="mha", properties=["agreement", "gradients"])
    assert result["gradients"].status is Status.PASS, _table(result)
    # every gradient was measured, separately: dx, four weights and four biases, in each dtype
    assert len(result["gradients"].measurements) == 9 * 2


@needs_torch
def test_llama_style_gqa_is_recognised_and_tiled_heads_are_named():
    correct = validate(mha_mutants.llama_style_gqa(), kind="mha")
    _assert_passes(correct)
    assert "2 key/value heads" in correct.settings["adapter"]
    assert correct["gradients"].status is Status.PASS, _table(correct)
    tiled = validate(mha_mutants.llama_style_gqa(tiled=True), kind="mha")
    assert tiled["agreement"].status is Status.FAIL, _table(tiled)
    assert "GQA heads tiled instead of interleaved" in tiled["agreement"].diagnosis, _table(tiled)
    assert tiled["agreement"].fault == "gqa:tiled"


def test_gradients_not_applicable_to_a_numpy_function():
    result = validate(multi_head_attention, kind="mha", properties=["gradients"])
    assert result["gradients"].status is Status.NOT_APPLICABLE


def test_head_independence_names_mixed_heads_and_w_o_probe_names_missing_projection():
    merged = validate(mha_mutants.merge_without_transpose, kind="mha")
    assert merged["head independence"].status is Status.FAIL
    assert "heads are mixed" in merged["head independence"].diagnosis
    assert merged["output projection"].status is Status.PASS  # W^O is there; only the merge is wrong
    no_wo = validate(mha_mutants.w_o_left_out, kind="mha")
    assert "W^O left out" in no_wo["agreement"].diagnosis  # named by matching as well as by the probe
    assert no_wo["head independence"].status is Status.PASS  # the heads themselves are right


def test_an_unknown_fault_is_not_given_a_wrong_name():
    def off_by_a_factor(x, w_q, w_k, w_v, w_o, num_heads):
        return 1.01 * mha_mutants.w_o_left_out(x, w_q, w_k, w_v, w_o, num_heads) @ w_o

    result = validate(off_by_a_factor, kind="mha")
    assert result["agreement"].status is Status.FAIL
    assert "matches none of the" in result["agreement"].diagnosis
    assert result["agreement"].fault is None


def test_a_raising_candidate_is_an_error_and_the_battery_goes_on():
    def broken(x, w_q, w_k, w_v, w_o, num_heads):
        raise RuntimeError("boom")

    result = validate(broken, kind="mha")
    assert result["agreement"].status is Status.ERROR
    assert "RuntimeError: boom" in result["agreement"].diagnosis
    assert result["output projection"].status is Status.ERROR  # every property ran


def test_a_hanging_candidate_times_out():
    import time

    def hangs(x, w_q, w_k, w_v, w_o, num_heads):
        while True:
            time.sleep(0.01)

    result = validate(hangs, kind="mha", time_limit=0.5, properties=["agreement", "head independence"])
    assert [p.status for p in result.properties] == [Status.TIMEOUT, Status.TIMEOUT]


def test_convention_errors_name_what_was_expected():
    def odd(x, weights, heads):
        return x

    with pytest.raises(TypeError, match="requires .*weights"):
        validate(odd, kind="mha")


# ------------------------------------------------------------------ block

@pytest.mark.parametrize("backend", backend_params("array_api_strict", "torch", "cupy"))
def test_numerics_block_passes_on_each_backend(backend):
    if backend == "cupy":
        load_backend("cupy")
    _assert_passes(validate(transformer_block, kind="block", backend=backend))


def test_float16_runs_and_a_dtype_the_battery_cannot_round_is_not_a_pass():
    result = validate(multi_head_attention, kind="mha", dtypes=("float64", "float16"))
    _assert_passes(result)
    assert any(m.what.startswith("float16") for m in result["agreement"].measurements)
    if HAS_TORCH:
        import torch

        only_bf16 = validate(torch.nn.MultiheadAttention(8, 2), kind="mha", dtypes=("bfloat16",))
        assert only_bf16["agreement"].status is Status.NOT_APPLICABLE, _table(only_bf16)
        assert "no dtype to run in" in only_bf16["agreement"].diagnosis


def test_numerics_block_passes_both_placements_and_gelus():
    for norm in ("post", "pre"):
        for approximate in ("none", "tanh"):
            cand = as_block_candidate(transformer_block, norm=norm, approximate=approximate)
            result = validate(cand, kind="block")
            _assert_passes(result)
            assert result["masks"].status is Status.PASS


def test_plain_numpy_block_passes():
    _assert_passes(validate(block_mutants.correct_post, kind="block"))


@needs_torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_encoder_layer_passes(norm_first, batch_first):
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", norm_first=norm_first,
                                             batch_first=batch_first)
    result = validate(layer, kind="block")
    _assert_passes(result)
    assert result["masks"].status is Status.PASS


@needs_torch
def test_torch_encoder_layer_tanh_gelu_fast_path_is_caught():
    """A finding, not a fixture: in eval mode under no_grad with batch_first=True, torch's
    TransformerEncoderLayer takes its fused fast path, which computes the erf GELU even when the
    layer was built with nn.GELU(approximate="tanh"); the slow path (batch_first=False) honours it."""
    import torch

    torch.manual_seed(0)
    made = {bf: torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=torch.nn.GELU(approximate="tanh"),
                                                 batch_first=bf) for bf in (True, False)}
    slow = validate(made[False], kind="block")
    _assert_passes(slow)
    fast = validate(made[True], kind="block")
    assert fast["gelu"].status is Status.FAIL, _table(fast)
    assert "uses the erf form where the tanh form is declared" in fast["gelu"].diagnosis


@needs_torch
def test_torch_block_written_differently_passes():
    from tests.verify.torch_implementations import PreLNBlock

    _assert_passes(validate(as_block_candidate(PreLNBlock(), approximate="tanh"), kind="block"))


@pytest.mark.parametrize("name", sorted(block_mutants.MUTANTS))
def test_block_mutant_fails_with_its_diagnosis(name):
    fn, kwargs, words, prop = block_mutants.MUTANTS[name]
    result = validate(as_block_candidate(fn, **kwargs), kind="block")
    assert not result.passed, _table(result)
    assert result[prop].status is Status.FAIL, _table(result)
    assert words in result[prop].diagnosis, _table(result)
    assert words in result["agreement"].diagnosis, _table(result)  # the agreement failure names it too


def test_gelu_constant_is_fitted_not_assumed():
    result = validate(as_block_candidate(block_mutants.gelu_constant_dropped_digit, approximate="tanh"), kind="block")
    text = result["gelu"].diagnosis
    assert "c = 0.04715" in text, text  # the fitted value, read off the candidate
    assert np.isclose(float(text.split("c = ")[1].split()[0]), 0.04715, rtol=1e-6)


# ------------------------------------------------------------------ command line

def test_command_line_kind_mha_and_block_on_file_paths():
    from pathlib import Path

    from click.testing import CliRunner

    from verify.cli import main

    mutants = Path(__file__).resolve().parent / "mutants"
    run = lambda *a: CliRunner().invoke(main, ["validate", *map(str, a)], env={"COLUMNS": "220"})  # noqa: E731
    bad = run(f"{mutants / 'mha.py'}:w_o_left_out", "--kind", "mha")
    assert bad.exit_code == 1, bad.output
    assert "W^O left out" in bad.output and "faults named: mha:no-w_o" in bad.output
    good = run(f"{mutants / 'block.py'}:correct_post", "--kind", "block")
    assert good.exit_code == 0, good.output
    assert "layer norm placement" in good.output and "every applicable property passed" in good.output
    worse = run(f"{mutants / 'block.py'}:layer_norm_over_tokens", "--kind", "block")
    assert worse.exit_code == 1 and "block:ln-axis" in worse.output, worse.output


@needs_torch
def test_command_line_torch_module_instance(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from verify.cli import main

    (tmp_path / "mymodel.py").write_text("import torch\nattn = torch.nn.MultiheadAttention(8, 2)\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "mymodel:attn", "--kind", "mha"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    assert "attention weights" in result.output
