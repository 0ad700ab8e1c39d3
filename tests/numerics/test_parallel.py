"""The split of large NumPy attention problems over cores gives the unsplit numbers."""

import numpy as np
import pytest

import numerics
from numerics import _parallel


@pytest.fixture
def force_split(monkeypatch):
    """Split even tiny problems, over two workers, so the slab path runs on any machine."""
    monkeypatch.setattr(_parallel, "MIN_SCORES", 0)
    monkeypatch.setattr(_parallel, "worker_count", lambda: 2)


def _problem(rng, batch=(3, 2), n=5, m=7):
    q = rng.standard_normal(batch + (n, 4))
    k = rng.standard_normal(batch + (m, 4))
    v = rng.standard_normal(batch + (m, 3))
    d_out = rng.standard_normal(batch + (n, 3))
    mask = rng.random((batch[0], 1, n, m)) > 0.3
    return q, k, v, d_out, mask


def _all_outputs(q, k, v, d_out, mask):
    out, w = numerics.scaled_dot_product_attention(q, k, v, mask=mask, causal=True, return_weights=True)
    return (out, w) + tuple(numerics.attention_backward(q, k, v, d_out, mask=mask, causal=True))


def test_split_path_is_taken_and_matches_unsplit(force_split, monkeypatch):
    q, k, v, d_out, mask = _problem(np.random.default_rng(0))
    calls = []
    real = _parallel.map_slabs
    monkeypatch.setattr(_parallel, "map_slabs", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    split = _all_outputs(q, k, v, d_out, mask)
    assert calls == [0, 0], "forward and backward should both split along batch axis 0"
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1 << 62)
    whole = _all_outputs(q, k, v, d_out, mask)
    for a, b in zip(split, whole):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_split_detects_wrong_join(force_split, monkeypatch):
    """The comparison above can fail: joining the slabs in the wrong order is caught."""
    q, k, v, d_out, mask = _problem(np.random.default_rng(1))
    whole = numerics.scaled_dot_product_attention(q, k, v, mask=mask)
    real = _parallel.join_slabs
    monkeypatch.setattr(
        _parallel, "join_slabs", lambda per_slab, axis: [np.flip(r, axis=axis) for r in real(per_slab, axis)]
    )
    wrong = numerics.scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.max(np.abs(wrong - whole)) > 1e-3


def test_split_mha_matches_unsplit(force_split, monkeypatch):
    rng = np.random.default_rng(2)
    params = numerics.init_params(8, 2, bias=True, seed=3)
    x = rng.standard_normal((4, 6, 8))
    d_out = rng.standard_normal((4, 6, 8))
    split_out = numerics.multi_head_attention(x, params, causal=True)
    split_grad = numerics.multi_head_attention_backward(x, params, d_out, causal=True)
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1 << 62)
    np.testing.assert_allclose(split_out, numerics.multi_head_attention(x, params, causal=True), rtol=0, atol=1e-14)
    whole_grad = numerics.multi_head_attention_backward(x, params, d_out, causal=True)
    np.testing.assert_allclose(split_grad.x, whole_grad.x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(split_grad.params.w_q, whole_grad.params.w_q, rtol=0, atol=1e-13)


def test_no_split_for_other_namespaces_or_small_problems():
    assert _parallel.split_axis(numerics._backend.get_namespace("array_api_strict"), (64, 8), 1 << 30) is None
    xp = numerics._backend.get_namespace("numpy")
    assert _parallel.split_axis(xp, (64, 8), 10) is None


def _split_attention_in_child():
    """Child of a fork: one split attention call (the parent's monkeypatches are inherited)."""
    q = np.random.default_rng(0).standard_normal((4, 5, 3))
    numerics.scaled_dot_product_attention(q, q, q)


def test_split_call_in_a_forked_child_does_not_hang(force_split, monkeypatch):
    """A fork (multiprocessing's default start on Linux) after a split call: the child's copy
    of the pool has no threads, and must not be waited on."""
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(_parallel, "_pool", None)  # a pool of our own, of exactly two threads
    both_running = threading.Barrier(2, timeout=30)
    _parallel.map_slabs(lambda x: both_running.wait(), [np.zeros((2, 1, 1))], 0, (2,))
    assert len(_parallel._pool._threads) == 2  # both threads exist, and are now idle
    child = multiprocessing.get_context("fork").Process(target=_split_attention_in_child)
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    _parallel._pool.shutdown()
    assert not hung, "the forked child waited forever on the parent's pool"
    assert child.exitcode == 0


def test_failing_slab_waits_for_the_other_slabs(force_split):
    """A slab that raises does not release the BLAS limit while another is still running."""
    import threading
    import time

    finished = threading.Event()

    def fn(x):
        if x.shape[0] and x[0, 0, 0] == 0:
            raise RuntimeError("slab 0 fails")
        time.sleep(0.2)
        finished.set()
        return (x,)

    with pytest.raises(RuntimeError, match="slab 0 fails"):
        _parallel.map_slabs(fn, [np.arange(2.0).reshape(2, 1, 1)], 0, (2,))
    assert finished.is_set()
