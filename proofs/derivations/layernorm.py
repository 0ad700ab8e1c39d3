"""Derivation 10: layer normalisation's output has mean 0 and variance v/(v + eps) per token.

Before gain and bias, y_i = (x_i - mu) / sqrt(v + eps) with mu = (1/D) sum x_i and the
biased variance v = (1/D) sum (x_i - mu)^2 (PyTorch's convention). Then mean(y) = 0
exactly and the (biased) variance of y is v / (v + eps) = 1 - eps/(v + eps): exactly 1
only when eps = 0 (and v > 0). Symbolic D via Sum, and explicit D = 2..5.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic, is_zero, unfold_indexed
from ._registry import register

__all__ = ["layer_norm_moments"]

SIZES = range(2, 6)
EPS = sp.Symbol("epsilon", nonnegative=True)


def _explicit(d: int) -> list:
    x = sp.symbols(f"x_1:{d + 1}", real=True)
    mu = sum(x) / d
    v = sum((xi - mu) ** 2 for xi in x) / d
    y = [(xi - mu) / sp.sqrt(v + EPS) for xi in x]
    mean_y = sum(y) / d
    var_y = sum((yi - mean_y) ** 2 for yi in y) / d
    return [sp.together(mean_y), sp.cancel(sp.together(var_y - v / (v + EPS)))]


def _unbiased_explicit(d: int) -> sp.Expr:
    """With s^2 = D v / (D - 1) in the normaliser, var(y) = ((D - 1)/D) s^2 / (s^2 + eps)."""
    x = sp.symbols(f"x_1:{d + 1}", real=True)
    mu = sum(x) / d
    v = sum((xi - mu) ** 2 for xi in x) / d
    s2 = d * v / (d - 1)
    y = [(xi - mu) / sp.sqrt(s2 + EPS) for xi in x]
    var_y = sum(yi**2 for yi in y) / d
    return sp.cancel(sp.together(var_y - sp.Rational(d - 1, d) * s2 / (s2 + EPS)))


def _numeric() -> tuple[bool, str]:
    from numerics import layer_norm

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 9)) * rng.uniform(0.01, 3, size=(6, 1)) + rng.standard_normal((6, 1))
    eps = 1e-5
    y = np.asarray(layer_norm(x, eps=eps))
    v = x.var(axis=-1)
    mean_err = float(np.max(np.abs(y.mean(axis=-1))))
    var_err = float(np.max(np.abs(y.var(axis=-1) - v / (v + eps))))
    one_err = float(np.max(np.abs(y.var(axis=-1) - 1)))
    ok = mean_err < 1e-14 and var_err < 1e-13 and one_err > var_err
    return ok, (f"numerics.layer_norm, eps={eps:g}: max |mean| = {mean_err:.1e}, max |var - v/(v+eps)| = {var_err:.1e} "
                f"(vs |var - 1| up to {one_err:.1e})")


@register("layer-norm-moments", "Layer norm output: mean 0, variance v/(v + eps)")
def layer_norm_moments() -> Derivation:
    """mean(y) = 0 and var(y) = v / (v + eps) before gain and bias (symbolic D and D = 2..5)."""
    x = sp.IndexedBase("x", real=True)
    i, k, d = sp.symbols("i k D", integer=True, positive=True)
    mu = sp.Sum(x[k], (k, 1, d)) / d
    v = sp.Sum((x[k] - mu) ** 2, (k, 1, d)) / d
    mu_s, v_s = sp.Symbol("mu", real=True), sp.Symbol("v", nonnegative=True)
    y = (x[i] - mu_s) / sp.sqrt(v_s + EPS)
    mean_y = sp.Sum(y, (i, 1, d)) / d
    var_y = sp.Sum(y**2, (i, 1, d)) / d
    s2 = d * v_s / (d - 1)  # the unbiased variance, D >= 2
    var_unbiased = sp.Sum(((x[i] - mu_s) / sp.sqrt(s2 + EPS)) ** 2, (i, 1, d)) / d

    y_shown = sp.IndexedBase("y")
    # the displayed notation y_i, mu, v in terms of the features x (the checks below are written
    # out already and skip it, unfold=False; it links each check to its displayed line)
    unfold_y = unfold_indexed({y_shown: lambda a: y.subs(i, a)})

    def unfold(e):
        e = unfold_y(e)
        return e.subs({mu_s: mu, v_s: v}) if isinstance(e, (sp.Basic, sp.MatrixBase)) else e

    def one_only_at_zero() -> tuple[bool, str]:
        ok, note = is_zero(v_s / (v_s + EPS) - (1 - EPS / (v_s + EPS)))
        roots = sp.solve(sp.Eq(1 - EPS / (v_s + EPS), 1), EPS)
        return ok and roots == [0], f"identity: {note}; 1 - eps/(v + eps) = 1 solved for eps: {roots}"

    steps = [
        Step.define(mu_s, mu, r"token mean over the $D$ features"),
        Step.define(v_s, v, r"biased variance, the $1/D$ convention of PyTorch's layer norm"),
        Step.assume(r"v + \varepsilon", sp.Integer(0), r"the normaliser is defined: $\varepsilon \ge 0$ and "
                    r"$v + \varepsilon > 0$ (not every feature equal when $\varepsilon = 0$)", rel=">"),
        Step.define(sp.Indexed("y", i), y, r"normalised features before gain $\gamma$ and bias $\beta$, $\varepsilon \ge 0$"),
        Step(sp.Sum(y_shown[i], (i, 1, d)) / d, sp.Integer(0), r"the centred features sum to 0 (symbolic $D$)",
             Symbolic(mean_y.subs(mu_s, mu), unfold=False)),
        Step(sp.Sum(y_shown[i] ** 2, (i, 1, d)) / d, v_s / (v_s + EPS),
             r"the mean of $y$ is 0, so this is its variance; $\sqrt{v+\varepsilon}$ factors out (symbolic $D$)",
             Symbolic(var_y.subs(mu_s, mu) - v / (v_s + EPS), unfold=False)),
        Step(None, 1 - EPS / (v_s + EPS), r"exactly 1 only if $\varepsilon = 0$ (and $v > 0$)",
             Custom(one_only_at_zero, "symbolic (identity and solve)")),
        Step(r"\bigl(\operatorname{mean}(y),\ \operatorname{var}(y) - \tfrac{v}{v+\varepsilon}\bigr)", r"(0, 0)",
             r"explicit features $x_1, \dots, x_D$", AtSizes(_explicit, SIZES, "D")),
        Step(r"\operatorname{var}(y)\big|_{s^2 = Dv/(D-1)}", r"\frac{D-1}{D}\,\frac{s^2}{s^2 + \varepsilon}",
             r"if the normaliser used the unbiased variance $s^2$ instead ($D \ge 2$), the variance would not be 1 "
             r"even at $\varepsilon = 0$ (symbolic $D$)",
             Symbolic(var_unbiased.subs(mu_s, mu) - v / (s2 + EPS) + (v_s - (d - 1) / d * s2) / (s2 + EPS), unfold=False)),
        Step(r"\operatorname{var}(y)\big|_{s^2 = Dv/(D-1)}", r"\frac{D-1}{D}\,\frac{s^2}{s^2 + \varepsilon}",
             r"cross-check with explicit features", AtSizes(_unbiased_explicit, SIZES, "D")),
        Step(r"\operatorname{mean}(y),\ \operatorname{var}(y)", r"0,\ \tfrac{v}{v + \varepsilon}",
             "cross-check on numerics.layer_norm", Custom(_numeric, "numeric cross-check (numerics.layer_norm)")),
    ]
    return Derivation(
        name="layer-norm-moments",
        title="Layer norm output: mean 0, variance v/(v + eps)",
        statement=(r"For $y_i = (x_i - \mu)/\sqrt{v + \varepsilon}$ with $\mu = \frac1D\sum_i x_i$ and "
                   r"$v = \frac1D\sum_i (x_i - \mu)^2$: $\frac1D \sum_i y_i = 0$ and "
                   r"$\frac1D \sum_i y_i^2 = \frac{v}{v + \varepsilon} = 1 - \frac{\varepsilon}{v + \varepsilon}$, "
                   r"which is 1 exactly when $\varepsilon = 0$ and $v > 0$."),
        steps=steps,
        unfold=unfold,
        assumptions=["real features, D >= 1 (symbolic D), eps >= 0, v + eps > 0; statistics over one token's "
                     "features, before gain and bias"],
        results={"mean": 0, "variance": "v/(v + eps)", "unbiased_normaliser_variance": "((D-1)/D) s^2/(s^2 + eps)"},
    )
