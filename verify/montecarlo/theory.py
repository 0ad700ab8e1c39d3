"""Closed forms the experiments compare against (derived by hand; cross-checked in the tests
against exact SymPy expectations at small sizes).

Dot product of independent vectors
----------------------------------
q, k in R^K with iid components, ``E q_l = mu_q``, ``Var q_l = s_q^2`` (likewise for k), q and k
independent. Each term ``q_l k_l`` has mean ``mu_q mu_k`` and variance
``E[q^2] E[k^2] - mu_q^2 mu_k^2 = s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2``; the K terms are
independent, so

    E[q·k] = K mu_q mu_k,    Var(q·k) = K (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2).

With mean 0 and variance 1 this is Vaswani et al.'s ``Var(q·k) = d_k`` (footnote 4), and
``Var(q·k / sqrt(d_k)) = 1``. Only second moments enter: the law of the components does not.

Self-attention with random projections, fresh weights (the ensemble at initialisation)
-------------------------------------------------------------------------------------
x, x' in R^D with iid components of mean 0, variance 1 and ``E x_i^4 = kappa``;
W^Q, W^K in R^{D x K} with iid N(0, 1/D) entries, independent of x, x' and of each other;
q = x W^Q, k = x' W^K. Given x and x', the columns give independent pairs
``(q_l, k_l) = (x·W^Q_l, x'·W^K_l)``, each ``q_l ~ N(0, |x|^2/D)`` and ``k_l ~ N(0, |x'|^2/D)``,
independent of each other (distinct weight matrices), so ``E[q·k | x, x'] = 0`` and
``E[(q·k)^2 | x, x'] = K |x|^2 |x'|^2 / D^2``. Hence ``E[q·k] = 0`` and

* x' independent of x:  ``Var(q·k) = K (E|x|^2)^2 / D^2 = K`` (any law of x);
* x' = x (a token against itself): ``Var(q·k) = K E|x|^4 / D^2 = K (D kappa + D(D-1)) / D^2
  = K (1 + (kappa - 1)/D)``, i.e. ``K (1 + 2/D)`` for Gaussian tokens, exactly ``K`` for
  Rademacher tokens.

Fixed weights (one drawn initialisation; the variation is over tokens only)
--------------------------------------------------------------------------
With ``A = W^Q (W^K)^T`` (D x D), ``q·k = x A x'^T``:

* x' independent: ``E = 0``, ``Var = ||A||_F^2`` (whose mean over W is K);
* x' = x: ``E = tr A``, ``Var = ||A||_F^2 + tr(A^2) + (kappa - 3) sum_i A_ii^2``
  (the quadratic-form variance ``2 tr(S^2) + (kappa - 3) sum_i S_ii^2`` with ``S = (A + A^T)/2``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._checks import check_int, check_real

__all__ = [
    "dot_moments",
    "projected_moments",
    "projected_conditional_moments",
    "softmax_jacobian_fro_bound",
]


def dot_moments(
    d_k: int,
    mean_q: float = 0.0,
    mean_k: float = 0.0,
    std_q: float = 1.0,
    std_k: float = 1.0,
    scaled: bool = False,
) -> tuple[float, float]:
    """``(E[q·k], Var(q·k))`` for independent q, k with iid components (divided by sqrt(d_k)
    when ``scaled``)."""
    d_k = check_int("d_k", d_k, minimum=1)
    mq, mk = check_real("mean_q", mean_q), check_real("mean_k", mean_k)
    sq, sk = check_real("std_q", std_q), check_real("std_k", std_k)
    if sq < 0 or sk < 0:
        raise ValueError(f"std_q and std_k must be >= 0, got std_q={std_q!r}, std_k={std_k!r}")
    mean = d_k * mq * mk
    var = d_k * (sq * sq * sk * sk + mq * mq * sk * sk + mk * mk * sq * sq)
    if scaled:
        return mean / math.sqrt(d_k), var / d_k
    return mean, var


def projected_moments(d_k: int, d_model: int, same_token: bool, kurtosis: float = 3.0) -> tuple[float, float]:
    """``(E[q·k], Var(q·k))`` over tokens and fresh N(0, 1/D) projections (see module docstring)."""
    d_k = check_int("d_k", d_k, minimum=1)
    d_model = check_int("d_model", d_model, minimum=1)
    kurtosis = check_real("kurtosis", kurtosis)
    if same_token:
        return 0.0, d_k * (1.0 + (kurtosis - 1.0) / d_model)
    return 0.0, float(d_k)


def projected_conditional_moments(w_q: Any, w_k: Any, same_token: bool, kurtosis: float = 3.0) -> tuple[float, float]:
    """``(E[q·k | W], Var(q·k | W))`` for fixed projections (NumPy arrays (D, K)), tokens random."""
    wq = np.asarray(w_q, dtype=np.float64)
    wk = np.asarray(w_k, dtype=np.float64)
    if wq.ndim != 2 or wq.shape != wk.shape:
        raise ValueError(f"w_q and w_k must be 2-D of one shape (D, K), got {wq.shape} and {wk.shape}")
    d, k = wq.shape
    if d <= k:
        a = wq @ wk.T  # (D, D)
        fro2 = float(np.sum(a * a))
        tr_a2 = float(np.sum(a * a.T))
        diag = np.diagonal(a)
    else:  # work with K x K Gram matrices
        gq, gk = wq.T @ wq, wk.T @ wk
        fro2 = float(np.sum(gq * gk))  # tr(Wq^T Wq Wk^T Wk) = ||Wq Wk^T||_F^2
        c = wk.T @ wq  # (K, K): tr(A^2) = tr((Wk^T Wq)^2)
        tr_a2 = float(np.sum(c * c.T))
        diag = np.sum(wq * wk, axis=1)
    if not same_token:
        return 0.0, fro2
    mean = float(np.sum(diag))
    return mean, fro2 + tr_a2 + (float(kurtosis) - 3.0) * float(np.sum(diag * diag))


def softmax_jacobian_fro_bound(n_keys: int) -> float:
    """A proved upper bound on ``||diag(s) - s s^T||_F`` over the simplex of ``n_keys`` weights.

    ``J = diag(s) - s s^T`` is symmetric positive semi-definite with ``v^T J v`` the variance of
    the entries of v under the weights s, at most ``(max v - min v)^2 / 4 <= 1/2`` for a unit v;
    so ``||J||_2 <= 1/2``, and with ``tr J = 1 - sum s_i^2 <= 1`` and rank at most ``n - 1``,
    ``||J||_F^2 = sum lambda_i^2 <= min(||J||_2 tr J, (n - 1) ||J||_2^2)``, i.e.
    ``||J||_F <= min(1/sqrt 2, sqrt(n - 1)/2)``. (Numerically the supremum is 1/2, reached by two
    equal weights; that sharper value is not claimed here.) No input makes it grow with the
    scores' magnitude.
    """
    n = check_int("n_keys", n_keys, minimum=1)
    return min(math.sqrt(n - 1) / 2.0, 1.0 / math.sqrt(2.0))
