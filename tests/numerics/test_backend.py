"""Backend dispatch: namespaces, lazy imports, errors that name the arguments."""

import subprocess
import sys

import numpy as np
import pytest

import numerics
from numerics import _backend as bk
from tests.helpers import backend_params


def test_numpy_caller_never_imports_cupy_or_torch():
    code = (
        "import sys, numpy as np, numerics\n"
        "x = np.random.default_rng(0).standard_normal((2, 5, 8))\n"
        "p = numerics.init_params(8, 2, bias=True)\n"
        "numerics.multi_head_attention_backward(x, p, x, causal=True)\n"
        "numerics.feed_forward(x, numerics.init_ffn_params(8, 16))\n"
        "bad = [m for m in ('cupy', 'torch', 'array_api_strict') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", backend_params("numpy", "array_api_strict", "torch"))
def test_get_namespace_by_name_and_module(name):
    xp = bk.get_namespace(name)
    module = __import__(name)
    assert bk.get_namespace(module) is xp
    params = numerics.init_params(4, 2, xp=name)
    assert bk.namespace_of(w=params.w_q) is xp


def test_get_namespace_rejects_unknown_names():
    with pytest.raises(ValueError, match="xp must be one of"):
        bk.get_namespace("jax.numpy.fake")
    with pytest.raises(TypeError, match="xp must be an array module"):
        bk.get_namespace(42)


def test_mixed_namespaces_name_both_arguments():
    torch = pytest.importorskip("torch")
    q = np.zeros((3, 4))
    with pytest.raises(TypeError, match=r"q is a numpy array.*k is a torch array"):
        numerics.scaled_dot_product_attention(q, torch.zeros(3, 4), q)


def test_outputs_stay_on_the_input_namespace(xp):
    params = numerics.init_params(4, 2, xp=xp, bias=True)
    x = xp.ones((1, 3, 4), dtype=xp.float64)
    out = numerics.multi_head_attention(x, params)
    assert type(out) is type(x)
    assert bk.namespace_of(out=out) is xp


def test_broadcast_shapes_matches_numpy():
    for shapes in [((2, 1, 3), (4, 1)), ((1,), (5, 2)), ((), (3,)), ((7, 1, 1), (1, 6, 1), (5,))]:
        assert bk.broadcast_shapes(*shapes) == np.broadcast_shapes(*shapes)
    with pytest.raises(ValueError, match="do not broadcast"):
        bk.broadcast_shapes((2, 3), (4, 3))


def test_num_heads_may_be_a_numpy_integer_but_must_be_positive(xp):
    params = numerics.init_params(4, 2, xp=xp)
    x = xp.ones((1, 3, 4), dtype=xp.float64)
    expected = numerics.multi_head_attention(x, params)
    params.num_heads = np.int64(2)
    assert bk.namespace_of(out=numerics.multi_head_attention(x, params)) is xp
    np.testing.assert_array_equal(np.asarray(numerics.multi_head_attention(x, params)), np.asarray(expected))
    params.num_heads = 0
    with pytest.raises(ValueError, match="params.num_heads must be a positive integer"):
        numerics.multi_head_attention(x, params)
