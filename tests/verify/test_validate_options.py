"""Sizes and conventions declared for kind mha / block: ``validate(..., options={...})`` and
``attnverify validate ... --option KEY=VALUE``; the declared convention is the one checked (a pre-LN
block passes when pre-LN is declared, fails by name when post-LN is), and bad options are named."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from numerics import multi_head_attention
from tests.helpers import OPTIONAL_BACKENDS
from verify.cli import main
from verify.validate import Status, validate
from verify.validate.options import check_options, parse_pairs

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")

#: A user's pre-LN block with the tanh GELU, in plain NumPy, weights by name (row convention).
PRE_LN_BLOCK = '''
import numpy as np

def _ln(u, g, b, eps=1e-5):
    mu = u.mean(-1, keepdims=True)
    var = ((u - mu) ** 2).mean(-1, keepdims=True)
    return (u - mu) / np.sqrt(var + eps) * g + b

def _gelu_tanh(u):
    return 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))

def _mha(x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads):
    *batch, n, _ = x.shape
    def heads(a):
        return np.swapaxes(a.reshape(*batch, n, num_heads, -1), -2, -3)
    q, k, v = heads(x @ w_q + b_q), heads(x @ w_k + b_k), heads(x @ w_v + b_v)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    o = np.swapaxes(p @ v, -2, -3).reshape(*batch, n, -1)
    return o @ w_o + b_o

def block(x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads, w1, b1, w2, b2,
          ln1_gamma, ln1_beta, ln2_gamma, ln2_beta):
    t = x + _mha(_ln(x, ln1_gamma, ln1_beta), w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads)
    return t + _gelu_tanh(_ln(t, ln2_gamma, ln2_beta) @ w1 + b1) @ w2 + b2
'''


def cli(*args):
    return CliRunner().invoke(main, ["validate", *map(str, args)], env={"COLUMNS": "220"})


@pytest.fixture
def pre_ln_file(tmp_path):
    path = tmp_path / "my_block.py"
    path.write_text(PRE_LN_BLOCK)
    return path


def test_cli_pre_ln_block_passes_when_declared(pre_ln_file, tmp_path):
    out = tmp_path / "v.json"
    result = cli(f"{pre_ln_file}:block", "--kind", "block", "--option", "norm=pre", "--option", "approximate=tanh",
                 "--option", "d_model=12", "--option", "num_heads=3", "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["options"] == {"norm": "pre", "approximate": "tanh", "d_model": 12, "num_heads": 3}
    statuses = {p["name"]: p["status"] for p in doc["properties"]}
    assert statuses["agreement"] == statuses["layer norm placement"] == statuses["gelu"] == "PASS"


def test_cli_same_block_undeclared_fails_naming_the_placement(pre_ln_file):
    # the default for a plain function is post-LN with erf GELU: the battery names both confusions
    result = cli(f"{pre_ln_file}:block", "--kind", "block")
    assert result.exit_code == 1, result.output
    assert "pre-LN and post-LN confused" in result.output
    assert "block:norm-placement" in result.output
    # declaring only the placement leaves the GELU form to be named
    result = cli(f"{pre_ln_file}:block", "--kind", "block", "--option", "norm=pre")
    assert result.exit_code == 1, result.output
    assert "GELU confused" in result.output and "pre-LN and post-LN confused" not in result.output


@pytest.mark.parametrize("args, words", [
    (("--option", "nrom=pre"), "'nrom' is not an option of kind 'block'"),
    (("--option", "norm=middle"), "option 'norm' must be one of ['post', 'pre'], got 'middle'"),
    (("--option", "d_model=twelve"), "option 'd_model' must be a positive integer, got 'twelve'"),
    (("--option", "d_model=10", "--option", "num_heads=3"), "option 'd_model' (10) must be divisible by option 'num_heads' (3)"),
    (("--option", "norm"), "option must be KEY=VALUE"),
    (("--option", "norm=pre", "--option", "norm=post"), "option 'norm' given twice"),
])
def test_cli_bad_options_are_named(pre_ln_file, args, words):
    result = cli(f"{pre_ln_file}:block", "--kind", "block", *args)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output


def test_cli_options_refused_for_sdpa(pre_ln_file):
    result = cli("numerics:scaled_dot_product_attention", "--option", "norm=pre")
    assert result.exit_code == 2, result.output
    assert "kind 'sdpa' takes none" in " ".join(result.output.split())


def test_help_points_to_the_mha_block_conventions():
    result = CliRunner().invoke(main, ["validate", "--help"], env={"COLUMNS": "220"})
    text = " ".join(result.output.split())
    assert "--option KEY=VALUE" in text and "--option norm=pre" in text
    assert 'README, "Multi-head attention and blocks"' in text


def test_mha_sizes_reach_a_plain_function():
    seen = []

    def mha(x, params):
        seen.append((x.shape[-1], params.num_heads))
        return multi_head_attention(x, params)

    result = validate(mha, kind="mha", options={"d_model": "12", "num_heads": "4"}, properties=["agreement"])
    assert result["agreement"].status is Status.PASS
    assert set(seen) == {(12, 4)}
    assert result.settings["options"] == {"d_model": 12, "num_heads": 4}


def test_mha_causal_option_declares_always_causal():
    def causal_mha(x, params):
        return multi_head_attention(x, params, causal=True)

    assert not validate(causal_mha, kind="mha", properties=["agreement"]).passed
    assert validate(causal_mha, kind="mha", options={"causal": "true"}, properties=["agreement"]).passed


def test_check_options_converts_and_refuses():
    assert check_options("block", {"eps": "1e-6", "d_ff": "32"}) == {"eps": 1e-6, "d_ff": 32}
    assert check_options("mha", {"causal": False}) == {"causal": False}
    assert check_options("mha", None) == {}
    with pytest.raises(ValueError, match="option 'causal' must be true or false, got 'maybe'"):
        check_options("mha", {"causal": "maybe"})
    with pytest.raises(ValueError, match="'norm' is not an option of kind 'mha'"):
        check_options("mha", {"norm": "pre"})
    with pytest.raises(ValueError, match="option 'num_heads' must be a positive integer, got 0"):
        check_options("block", {"num_heads": 0})
    with pytest.raises(TypeError, match="options must be a mapping"):
        check_options("block", ["norm=pre"])
    assert parse_pairs(["norm = pre", "d_model=16"]) == {"norm": "pre", "d_model": "16"}


@needs_torch
def test_a_module_size_that_disagrees_is_named():
    import torch

    with pytest.raises(ValueError, match="option 'num_heads' is 4, but the module .* has num_heads = 2"):
        validate(torch.nn.MultiheadAttention(8, 2), kind="mha", options={"num_heads": 4})
    # the module's own sizes restated are fine
    result = validate(torch.nn.MultiheadAttention(8, 2), kind="mha", options={"d_model": 8}, properties=["agreement"])
    assert result["agreement"].status is Status.PASS
