r"""A derivation with a deliberately wrong step, to show what a failure looks like.

Dividing the scores q.k by d_k instead of sqrt(d_k) is a common slip. Here the slip is a
step of its own: ``attnverify prove proofs/examples/wrong_step.py`` prints FAIL against it,
the residual SymPy was left with (1/d_k - 1), and a counterexample (d_k = 2 gives 1/2, not 1),
and exits with code 1. The other steps still run and pass.
"""

import sympy as sp
from sympy import stats

from proofs import AtSizes, Derivation, Step, Symbolic

d = sp.Symbol("d_k", integer=True, positive=True)


def variance_minus_d(size):
    """Var(q.k) - d_k by sympy.stats, for standard Normal components at an explicit d_k."""
    qs = [stats.Normal(f"q{l}", 0, 1) for l in range(size)]
    ks = [stats.Normal(f"k{l}", 0, 1) for l in range(size)]
    return stats.variance(sum(a * b for a, b in zip(qs, ks))) - size


def scaled_variance(scale):
    """Var(c q.k) = c^2 Var(q.k) with Var(q.k) = d_k."""
    return scale**2 * d


score_scaling = Derivation(
    name="score-scaling",
    title="Which scale keeps the variance of the scores at 1",
    statement=r"For $q, k$ with independent standard Normal components, "
              r"$\operatorname{Var}(q \cdot k / \sqrt{d_k}) = 1$.",
    assumptions=["the 2 d_k components of q and k are independent standard Normals"],
    steps=[
        Step(r"\operatorname{Var}(q \cdot k)", d, "sum of d_k independent products of unit variance "
             "(sympy.stats at explicit sizes)", AtSizes(variance_minus_d, range(1, 3), "d_k")),
        Step(r"\operatorname{Var}(q \cdot k / \sqrt{d_k})", sp.Integer(1),
             r"$\operatorname{Var}(cX) = c^2 \operatorname{Var}(X)$ with $c = 1/\sqrt{d_k}$",
             Symbolic(scaled_variance(1 / sp.sqrt(d)) - 1)),
        # The deliberate mistake: the scale 1/d_k does NOT keep the variance at 1.
        Step(r"\operatorname{Var}(q \cdot k / d_k)", sp.Integer(1),
             "dividing by d_k keeps the variance at 1 too",
             Symbolic(scaled_variance(1 / d) - 1)),
    ],
)
