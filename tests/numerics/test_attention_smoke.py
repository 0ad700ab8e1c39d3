import numpy as np

import numerics
from tests.helpers import from_numpy, to_numpy


def test_attention_rows_are_convex_combinations(xp):
    rng = np.random.default_rng(0)
    q, k, v = (from_numpy(xp, rng.standard_normal(s)) for s in [(2, 5, 4), (2, 6, 4), (2, 6, 3)])
    out, w = numerics.scaled_dot_product_attention(q, k, v, return_weights=True)
    w = to_numpy(w)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(to_numpy(out), w @ to_numpy(v), rtol=0, atol=1e-14)
