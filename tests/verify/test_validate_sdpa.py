"""The validate battery, kind "sdpa": every mutant fails with its fault named, every correct
implementation passes, a raising or hanging one is reported and the battery goes on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import numerics
from tests.helpers import OPTIONAL_BACKENDS, backend_params, load_backend
from tests.verify.mutants import correct, sdpa as mutants
from verify.validate import Status, validate
from verify.validate.backends import INSTALL

#: Small searches keep the file fast; the defaults are exercised by benchmarks/bench_validate.py.
FAST = {"max_examples": 12}


def _needs_torch(kw):
    if kw.get("backend") == "torch":
        pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


@pytest.mark.parametrize("mutant, fault, kw", mutants.MUTANTS, ids=[m[0].__name__ for m in mutants.MUTANTS])
def test_every_mutant_fails_with_its_fault_named(mutant, fault, kw):
    _needs_torch(kw)
    result = validate(mutant, **FAST, **kw)
    assert not result.passed
    assert fault in result.faults, [(p.name, p.status.value, p.diagnosis) for p in result.failures]
    named = [p for p in result.failures if p.fault == fault]
    assert named[0].diagnosis and named[0].status is Status.FAIL
    if not fault.startswith("precision:"):  # a real fault is not taken for rounding (large logits' lenient floor)
        assert not [f for f in result.faults if f.startswith("precision:")], result.faults


@pytest.mark.parametrize("impl", [correct.logsumexp_form, correct.online_softmax], ids=lambda f: f.__name__)
def test_correct_implementations_written_differently_pass(impl):
    result = validate(impl, **FAST)
    assert result.passed, [(p.name, p.diagnosis) for p in result.failures]
    assert result["causality"].status is Status.PASS and result["mask_polarity"].status is Status.PASS


@pytest.mark.parametrize("backend", backend_params("numpy", "array_api_strict", "torch"))
def test_our_sdpa_passes_on_each_backend(backend):
    load_backend(backend)
    result = validate(numerics.scaled_dot_product_attention, backend=backend, **FAST)
    assert result.passed, [(p.name, p.diagnosis) for p in result.failures]
    # numerics takes every option: nothing is left not applicable except what needs weights/autograd
    assert result["gqa"].status is Status.PASS and result["causality"].status is Status.PASS
    if backend == "torch":
        assert result["gradients"].status is Status.PASS


def test_torch_sdpa_passes_with_gradients():
    torch = pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    result = validate(torch.nn.functional.scaled_dot_product_attention, **FAST)
    assert result.settings["adapter"] == "torch.nn.functional.scaled_dot_product_attention"
    assert result.passed, [(p.name, p.diagnosis) for p in result.failures]
    assert result["gradients"].status is Status.PASS
    assert "zeros" in result["empty_rows"].diagnosis


def test_torch_sdpa_on_cuda():
    torch = pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = validate(torch.nn.functional.scaled_dot_product_attention, device="cuda", **FAST)
    assert result.settings["device"] == "cuda"
    assert result.passed, [(p.name, p.diagnosis) for p in result.failures]


def test_jax_dot_product_attention_passes():
    jax = pytest.importorskip("jax", reason=f"jax is not installed ({INSTALL['jax']})")
    # float32 only: jax has float64 only under jax_enable_x64; each new shape costs a compilation
    result = validate(jax.nn.dot_product_attention, dtypes=["float32"], max_examples=5)
    assert result.passed, [(p.name, p.diagnosis) for p in result.failures]
    assert "mean of V" in result["empty_rows"].diagnosis and result["gradients"].status is Status.PASS


def test_torch_functions_are_detected_from_their_code():
    pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    result = validate(mutants.nan_gradient_empty_rows, properties=["agreement"], **FAST)
    assert result.settings["backend"] == "torch"


def test_mask_convention_block_and_layout_bshd():
    # The inverted-polarity mutant is right for a caller whose masks say True = blocked.
    assert validate(mutants.mask_inverted, mask_convention="block", **FAST).passed
    assert "mask:inverted" in validate(mutants.mask_inverted, **FAST).faults

    def bshd(q, k, v, mask=None):  # (B, N, H, K)
        t = lambda x: np.swapaxes(x, -2, -3)  # noqa: E731
        return t(correct.logsumexp_form(t(q), t(k), t(v), mask=mask))

    assert validate(bshd, layout="bshd", **FAST).passed
    assert not validate(bshd, **FAST).passed


def test_the_failing_example_is_shrunk():
    result = validate(mutants.no_scale, properties=["agreement"], max_examples=30)
    example = result["agreement"].example
    assert result["agreement"].status is Status.FAIL
    # a random search starts with sizes up to 40 x 40; hypothesis shrinks towards the smallest
    assert example["q"][-2] <= 3 and example["k"][-2] <= 3, example


def test_a_raising_implementation_is_an_error_and_the_battery_goes_on():
    def raises_on_masks(q, k, v, mask=None):
        if mask is not None:
            raise RuntimeError("masks are not implemented")
        return correct.logsumexp_form(q, k, v)

    result = validate(raises_on_masks, **FAST)
    assert result["mask_polarity"].status is Status.ERROR
    assert "RuntimeError: masks are not implemented" in result["mask_polarity"].diagnosis
    assert result["scale"].status is Status.PASS and result["shift_invariance"].status is Status.PASS
    assert not result.passed


def test_a_hanging_implementation_times_out_and_the_battery_goes_on():
    def loops_on_large_inputs(q, k, v, mask=None):
        if np.max(np.abs(k)) > 100:  # masked_values and large_logits only
            while True:
                pass
        return correct.logsumexp_form(q, k, v, mask=mask)

    start = time.monotonic()
    result = validate(loops_on_large_inputs, time_limit=2, **FAST)
    assert result["large_logits"].status is Status.TIMEOUT
    assert result["masked_values"].status is Status.TIMEOUT
    assert "was stopped" in result["large_logits"].diagnosis
    assert result["large_logits"].example["q"] == [2, 2, 6, 8]  # the call that hung
    assert result["scale"].status is Status.PASS and result["causality"].status is Status.NOT_APPLICABLE
    assert time.monotonic() - start < 60


def test_a_call_blocked_in_native_code_is_abandoned():
    never = threading.Event()

    def blocks(q, k, v):
        never.wait()

    result = validate(blocks, time_limit=1, properties=["scale"])
    assert result["scale"].status is Status.TIMEOUT
    assert "abandoned" in result["scale"].diagnosis
    never.set()


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="fn must be callable"):
        validate(3)
    with pytest.raises(ValueError, match="dtypes"):
        validate(correct.logsumexp_form, dtypes=["float8"])
    with pytest.raises(ValueError, match="layout"):
        validate(correct.logsumexp_form, layout="sbhd")
    with pytest.raises(ValueError, match="properties"):
        validate(correct.logsumexp_form, properties=["nope"])


def test_same_seed_same_result():
    a = validate(mutants.stray_factor, properties=["agreement"], **FAST).to_dict()
    b = validate(mutants.stray_factor, properties=["agreement"], **FAST).to_dict()
    assert a == b


def test_returned_weights_are_checked():
    def with_weights(q, k, v, return_weights=False):
        w = numerics.scaled_dot_product_attention(q, k, v, return_weights=True)[1]
        out = w @ v
        return (out, w) if return_weights else out

    def unnormalised_weights(q, k, v, return_weights=False):
        out, w = with_weights(q, k, v, True)
        return (out, np.exp(np.log(w + 1e-300) * 0.5)) if return_weights else out  # rows no longer sum to 1

    assert validate(with_weights, properties=["weights"], **FAST)["weights"].status is Status.PASS
    bad = validate(unnormalised_weights, properties=["weights"], **FAST)["weights"]
    assert bad.status is Status.FAIL and bad.fault == "weights:row_sum"


def test_a_dtype_the_library_lacks_is_refused_or_noted():
    with pytest.raises(ValueError, match="backend 'numpy' has none of them"):
        validate(correct.online_softmax, dtypes=["bfloat16"])
    result = validate(correct.online_softmax, dtypes=["float32", "bfloat16"], properties=["scale"])
    assert result.settings["dtypes_not_run"] == ["bfloat16"]


def test_max_examples_is_honoured():
    calls = []

    def counted(q, k, v):
        calls.append(q.shape)
        return correct.online_softmax(q, k, v)

    result = validate(counted, properties=["agreement"], max_examples=5, dtypes=["float64"])
    # 5 random problems, then the one explicit 113 x 203 problem (one dtype)
    assert len(calls) <= 6 and result["agreement"].status is Status.PASS
    assert (113, 24) in [shape[-2:] for shape in calls]


@pytest.mark.parametrize("seed", [6, 9, 10, 11, 12])
def test_the_scale_fit_allows_bfloat16_rounding(seed):
    # bfloat16 rounding moves the fitted scale by ~u = 0.0039: a fixed 2e-3 called correct code "a stray factor"
    pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")
    ok = validate(correct.torch_masked_fill, dtypes=["bfloat16"], properties=["scale"], seed=seed)["scale"]
    assert ok.status is Status.PASS, ok.diagnosis


def test_a_stray_factor_still_fails_the_scale_in_bfloat16():
    torch = pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")

    def stray(q, k, v, scale=None):
        return correct.torch_masked_fill(q, k, v, scale=1.03 * (q.shape[-1] ** -0.5 if scale is None else scale))

    bad = validate(stray, backend="torch", dtypes=["bfloat16"], properties=["scale"])["scale"]
    assert torch and bad.status is Status.FAIL and bad.fault == "scale:stray_factor", bad.diagnosis


def test_a_future_leak_and_a_wrong_alignment_are_told_apart():
    # at N = 1, M = 2 tril(k=1) and bottom-right alignment coincide: the square problem decides
    leak = validate(mutants.causal_leaks_one, **FAST)
    assert "causal:future_leak" in leak.faults and "causal:bottom_right" not in leak.faults, leak.faults
    assert "i+1" in leak["causality"].diagnosis and "i+1" in leak["agreement"].diagnosis
    aligned = validate(mutants.causal_bottom_right, **FAST)
    assert "causal:bottom_right" in aligned.faults and "causal:future_leak" not in aligned.faults, aligned.faults


@pytest.mark.parametrize("mutant, code", [(mutants.softmax_in_float32, "precision:float32"),
                                          (mutants.float16_sum, "precision:float16")], ids=["float32", "float16"])
def test_lower_precision_is_one_finding_not_a_scale_or_mask_fault(mutant, code):
    # float64 asked, less delivered: the precision is named once; the properties that compare values
    # judge by the delivered precision's rule and invent no scale, mask, determinism or gradient fault
    kw = {"backend": "torch"} if mutant is mutants.softmax_in_float32 else {}
    _needs_torch(kw)
    result = validate(mutant, **FAST, **kw)
    assert result.faults == (code,), [(p.name, p.diagnosis) for p in result.failures]
    assert {p.name for p in result.failures} <= {"agreement", "mpmath"}, [(p.name, p.diagnosis) for p in result.failures]
    if kw:
        assert result["gradients"].status is Status.PASS and "judged as the float32" in str(result["gradients"].measurements)


def test_dropout_left_on_is_named_by_determinism_and_a_repeatable_wrong_output_is_not():
    random = validate(mutants.dropout_left_on, properties=["determinism", "agreement"], **FAST)
    assert random["determinism"].fault == "nondeterministic" and "dropout" in random["determinism"].diagnosis
    assert random["agreement"].fault == "nondeterministic"
    wrong = validate(mutants.no_scale, properties=["determinism"], **FAST)["determinism"]
    assert wrong.status is Status.PASS, wrong.diagnosis  # wrong but the same twice: not determinism's finding


def test_gradients_of_a_wrong_forward_are_not_judged():
    _needs_torch({"backend": "torch"})

    def no_scale_torch(q, k, v):
        import torch
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    result = validate(no_scale_torch, backend="torch", properties=["gradients"], **FAST)["gradients"]
    assert result.status is Status.NOT_APPLICABLE and "forward differs" in result.diagnosis


def test_detached_weights_are_named_zero_gradient():
    _needs_torch({"backend": "torch"})

    def detached(q, k, v):
        import torch
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1).detach() @ v

    result = validate(detached, backend="torch", properties=["gradients"], **FAST)["gradients"]
    assert result.fault == "gradient:dq_zero" and "dq is zero: no gradient reaches q" in result.diagnosis


@pytest.mark.parametrize("returned, words", [(None, "returned None, not an array"),
                                             ([1.0], "returned a list ([1.0]), not an array")])
def test_a_return_that_is_not_an_array_is_said_as_it_is(returned, words):
    result = validate(lambda q, k, v: returned, properties=["agreement", "scale"], **FAST)
    for p in result.properties:
        assert p.status is Status.ERROR and words in p.diagnosis and "raised" not in p.diagnosis, p.diagnosis


def test_the_mask_inverted_words_give_the_flag_and_the_keyword():
    bad = validate(mutants.mask_inverted, properties=["mask_polarity"], **FAST)["mask_polarity"]
    assert "--mask-convention block" in bad.diagnosis and "mask_convention='block'" in bad.diagnosis
