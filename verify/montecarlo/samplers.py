"""The experiments' samplers, written once against the array API (NumPy or CuPy).

Shape letters (the project's glossary): n samples in a block, K key/query width d_k, D model width,
M keys per query row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numerics.softmax import softmax

from ._checks import check_choice, check_int, check_real
from .distributions import Distribution, get_distribution
from .results import Output
from .theory import dot_moments, projected_conditional_moments, projected_moments

__all__ = [
    "DotSampler",
    "ProjectedSampler",
    "SaturationSampler",
    "softmax_row_stats",
    "SATURATION_THRESHOLD",
    "VANISHED_THRESHOLD",
]

#: A row counts as saturated when its largest weight exceeds this.
SATURATION_THRESHOLD = 0.99
#: A row's query gradient counts as vanished when ``||ds/dq||_F`` is below this.
VANISHED_THRESHOLD = 1e-3


@dataclass
class DotSampler:
    """``q·k`` (or ``q·k / sqrt(K)``) for independent q, k with iid components.

    Components are ``mean + std * z`` with z from a standardised :class:`Distribution`.

    Parameters
    ----------
    d_k : int
        K, the width of q and k.
    dist : str or Distribution
        ``"normal"``, ``"uniform"``, ``"rademacher"`` or ``"t5"``.
    mean_q, mean_k, std_q, std_k : float
        Component means and standard deviations.
    scaled : bool
        Divide by sqrt(K).

    Outputs
    -------
    ``"dot"``: array (n,) of ``q·k`` values (moments).
    """

    d_k: int
    dist: str | Distribution = "normal"
    mean_q: float = 0.0
    mean_k: float = 0.0
    std_q: float = 1.0
    std_k: float = 1.0
    scaled: bool = False
    target: tuple[str, str] = ("dot", "variance")

    def __post_init__(self):
        self.d_k = check_int("d_k", self.d_k, minimum=1)
        self.dist = get_distribution(self.dist)
        for name in ("mean_q", "mean_k", "std_q", "std_k"):
            setattr(self, name, check_real(name, getattr(self, name)))
        if self.std_q < 0 or self.std_k < 0:
            raise ValueError(f"std_q and std_k must be >= 0, got std_q={self.std_q!r}, std_k={self.std_k!r}")

    @property
    def name(self) -> str:
        return "scaled" if self.scaled else "variance"

    @property
    def params(self) -> dict:
        return {"d_k": self.d_k, "dist": self.dist.name, "mean_q": self.mean_q, "mean_k": self.mean_k,
                "std_q": self.std_q, "std_k": self.std_k, "scaled": self.scaled}

    @property
    def outputs(self) -> dict:
        # q·k is bilinear in the components: its moments are finite exactly where theirs are
        return {"dot": Output("q·k/sqrt(d_k)" if self.scaled else "q·k", finite_moments=self.dist.finite_moments)}

    @property
    def elements_per_sample(self) -> int:
        return 2 * self.d_k

    def predicted(self) -> tuple[float, float]:
        """``(mean, variance)`` from :func:`theory.dot_moments`."""
        return dot_moments(self.d_k, self.mean_q, self.mean_k, self.std_q, self.std_k, self.scaled)

    def _component(self, xp, rng, n, mean, std):
        z = self.dist.draw(xp, rng, (n, self.d_k))
        if std != 1.0:
            z = z * std
        if mean != 0.0:
            z = z + mean
        return z

    def __call__(self, xp: Any, rng: Any, n: int) -> dict:
        q = self._component(xp, rng, n, self.mean_q, self.std_q)  # (n, K)
        k = self._component(xp, rng, n, self.mean_k, self.std_k)  # (n, K)
        dot = xp.vecdot(q, k)  # (n,)
        if self.scaled:
            dot = dot / math.sqrt(self.d_k)
        return {"dot": dot}


@dataclass
class ProjectedSampler:
    """``q·k`` with ``q = x W^Q``, ``k = x' W^K`` as in self-attention.

    Tokens x, x' (D,) have iid standardised components from ``dist``; W^Q, W^K (D, K) have iid
    N(0, 1/D) entries.

    Parameters
    ----------
    d_k : int
        K.
    d_model : int
        D.
    same_token : bool
        ``x' = x`` (a token scored against itself) instead of an independent token.
    weights : {"fresh", "fixed"}
        ``"fresh"``: new W^Q, W^K for every sample (the ensemble over initialisations);
        ``"fixed"``: one W^Q, W^K drawn from ``weight_seed`` (a model at initialisation), only the
        tokens vary.
    dist : str or Distribution
        Law of the token components.
    weight_seed : int or SeedSequence, optional
        Seed of the fixed weights (required for ``weights="fixed"``).
    """

    d_k: int
    d_model: int = 16
    same_token: bool = False
    weights: str = "fresh"
    dist: str | Distribution = "normal"
    weight_seed: Any = None
    target: tuple[str, str] = ("dot", "variance")
    _w_host: tuple | None = field(default=None, repr=False)
    _w_dev: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.d_k = check_int("d_k", self.d_k, minimum=1)
        self.d_model = check_int("d_model", self.d_model, minimum=1)
        self.weights = check_choice("weights", self.weights, ("fresh", "fixed"))
        self.dist = get_distribution(self.dist)
        if self.weights == "fixed":
            if self.weight_seed is None:
                raise ValueError("weight_seed is required for weights='fixed', got None")
            ss = self.weight_seed if isinstance(self.weight_seed, np.random.SeedSequence) else np.random.SeedSequence(
                check_int("weight_seed", self.weight_seed, minimum=0))
            self.weight_seed = ss
            rng = np.random.Generator(np.random.PCG64(ss))
            scale = 1.0 / math.sqrt(self.d_model)
            wq = rng.standard_normal((self.d_model, self.d_k)) * scale
            wk = rng.standard_normal((self.d_model, self.d_k)) * scale
            self._w_host = (wq, wk)

    @property
    def name(self) -> str:
        return "projected"

    @property
    def params(self) -> dict:
        p = {"d_k": self.d_k, "d_model": self.d_model, "same_token": self.same_token,
             "weights": self.weights, "dist": self.dist.name}
        if self.weights == "fixed":
            p["weight_seed"] = int(self.weight_seed.entropy)
            p["weight_spawn_key"] = list(self.weight_seed.spawn_key)
        return p

    @property
    def outputs(self) -> dict:
        # bilinear in x, x' (finite below the components' order), quadratic in x when x' = x (half that)
        p = self.dist.finite_moments / (2.0 if self.same_token else 1.0)
        return {"dot": Output("x W^Q · x W^K" if self.same_token else "x W^Q · x' W^K", finite_moments=p)}

    @property
    def elements_per_sample(self) -> int:
        base = 2 * self.d_model + 2 * self.d_k
        return base + (2 * self.d_model * self.d_k if self.weights == "fresh" else 0)

    @property
    def weight_matrices(self) -> tuple | None:
        """The fixed (W^Q, W^K) as NumPy arrays (D, K), or None for fresh weights."""
        return self._w_host

    def predicted(self) -> tuple[float, float]:
        """Exact ``(mean, variance)``: the ensemble formula (fresh) or the conditional one (fixed)."""
        if self.weights == "fresh":
            return self.ensemble_predicted()
        return projected_conditional_moments(*self._w_host, self.same_token, self.dist.kurtosis)

    def ensemble_predicted(self) -> tuple[float, float]:
        """``(mean, variance)`` averaged over initialisations (the fresh-weights formula)."""
        return projected_moments(self.d_k, self.d_model, self.same_token, self.dist.kurtosis)

    def _fixed(self, xp):
        key = id(xp)
        if key not in self._w_dev:
            self._w_dev[key] = tuple(xp.asarray(w) for w in self._w_host)
        return self._w_dev[key]

    def __call__(self, xp: Any, rng: Any, n: int) -> dict:
        d, k_ = self.d_model, self.d_k
        x = self.dist.draw(xp, rng, (n, d))  # (n, D)
        x2 = x if self.same_token else self.dist.draw(xp, rng, (n, d))  # (n, D)
        if self.weights == "fresh":
            scale = 1.0 / math.sqrt(d)
            wq = rng.standard_normal((n, d, k_)) * scale  # (n, D, K)
            wk = rng.standard_normal((n, d, k_)) * scale  # (n, D, K)
            q = xp.matmul(x[:, None, :], wq)[:, 0, :]  # (n, K)
            k = xp.matmul(x2[:, None, :], wk)[:, 0, :]  # (n, K)
        else:
            wq, wk = self._fixed(xp)
            q = xp.matmul(x, wq)  # (n, K)
            k = xp.matmul(x2, wk)  # (n, K)
        return {"dot": xp.vecdot(q, k)}


def softmax_row_stats(xp: Any, z: Any) -> dict:
    """Per-row softmax statistics of logits ``z`` (n, M), accurate when a row saturates.

    Returns a dict of arrays (n,): ``max_weight``, ``entropy`` (nats), ``jacobian_fro``
    (``||diag(s) - s s^T||_F``) and the weights ``s`` (n, M) themselves.

    Saturated rows (one weight ``1 - eps`` with tiny eps) are computed without cancellation:
    ``1 - s_max`` is the sum of the other weights, ``||J||_F^2 = sum_i s_i^2 ((1 - s_i)^2 +
    sum_{j != i} s_j^2)`` with both factors summed from the small weights for the largest one,
    and ``H = -log(s_max) + sum_j s_j (z_max - z_j)`` with ``-log(s_max) = -log1p(-(1 - s_max))``.
    """
    s = softmax(z, axis=-1, check_finite=False)  # (n, M)
    s_max = xp.max(s, axis=-1)  # (n,)
    big = s > 0.5  # at most one per row
    small = xp.where(big, xp.zeros_like(s), s)
    rest = xp.sum(small, axis=-1)  # (n,): 1 - s_max when a weight exceeds 1/2
    r = xp.where(big, rest[:, None], 1.0 - s)  # 1 - s_i, accurate
    s2 = s * s
    p2 = xp.sum(s2, axis=-1)
    rest2 = xp.sum(small * small, axis=-1)
    others2 = xp.where(big, rest2[:, None], p2[:, None] - s2)  # sum_{j != i} s_j^2
    jac2 = xp.sum(s2 * (r * r + others2), axis=-1)
    jac = xp.sqrt(xp.maximum(jac2, xp.zeros_like(jac2)))
    one_minus_max = xp.where(s_max > 0.5, rest, 1.0 - s_max)
    neg_log_max = -xp.log1p(-one_minus_max)
    z_max = xp.max(z, axis=-1)
    entropy = neg_log_max + xp.sum(s * (z_max[:, None] - z), axis=-1)
    return {"s": s, "max_weight": s_max, "entropy": entropy, "jacobian_fro": jac}


@dataclass
class SaturationSampler:
    """Softmax saturation and gradients for one query against M keys, raw and scaled scores.

    One sample is a row: q (K,) and keys k_1..k_M (M, K) with iid standardised components; scores
    ``z_j = q·k_j`` (raw) or ``q·k_j / sqrt(K)`` (scaled), both from the same draws.

    Outputs (each suffixed ``_raw`` and ``_scaled``)
    --------------------------------------------------
    max_weight : largest softmax weight (moments)
    entropy : softmax entropy in nats (moments)
    jacobian_fro : ``||diag(s) - s s^T||_F``, the Jacobian of the weights in the scores (moments)
    grad_q_fro : ``||ds/dq||_F = ||J K||_F`` (divided by sqrt(K) when scaled): the Jacobian of the
        weights in the query, ``sqrt(sum_i s_i^2 ||k_i - sum_j s_j k_j||^2)`` (moments)
    saturated : largest weight above ``SATURATION_THRESHOLD`` (fraction)
    grad_vanished : ``||ds/dq||_F`` below ``VANISHED_THRESHOLD`` (fraction)
    """

    d_k: int
    n_keys: int = 16
    dist: str | Distribution = "normal"
    target: tuple[str, str] = ("jacobian_fro_raw", "mean")

    def __post_init__(self):
        self.d_k = check_int("d_k", self.d_k, minimum=1)
        self.n_keys = check_int("n_keys", self.n_keys, minimum=2)
        self.dist = get_distribution(self.dist)

    @property
    def name(self) -> str:
        return "saturation"

    @property
    def params(self) -> dict:
        return {"d_k": self.d_k, "n_keys": self.n_keys, "dist": self.dist.name}

    @property
    def outputs(self) -> dict:
        out = {}
        for tag, lab in (("raw", "q·k"), ("scaled", "q·k/sqrt(d_k)")):
            out[f"max_weight_{tag}"] = Output(f"max softmax({lab})")
            out[f"entropy_{tag}"] = Output(f"entropy softmax({lab})")
            out[f"jacobian_fro_{tag}"] = Output(f"||J||_F softmax({lab})")
            out[f"grad_q_fro_{tag}"] = Output(f"||ds/dq||_F softmax({lab})")
            out[f"saturated_{tag}"] = Output(f"max softmax({lab}) > {SATURATION_THRESHOLD}", kind="fraction")
            out[f"grad_vanished_{tag}"] = Output(f"||ds/dq||_F softmax({lab}) < {VANISHED_THRESHOLD:g}", kind="fraction")
        return out

    @property
    def elements_per_sample(self) -> int:
        return 3 * (self.n_keys + 1) * self.d_k

    def __call__(self, xp: Any, rng: Any, n: int) -> dict:
        kk, m = self.d_k, self.n_keys
        q = self.dist.draw(xp, rng, (n, kk))  # (n, K)
        keys = self.dist.draw(xp, rng, (n, m, kk))  # (n, M, K)
        z = xp.vecdot(keys, q[:, None, :])  # (n, M)
        out = {}
        for tag, scale in (("raw", 1.0), ("scaled", 1.0 / math.sqrt(kk))):
            zz = z if scale == 1.0 else z * scale
            st = softmax_row_stats(xp, zz)
            s = st["s"]
            kbar = xp.matmul(s[:, None, :], keys)  # (n, 1, K)
            diff = keys - kbar  # (n, M, K)
            dist2 = xp.vecdot(diff, diff)  # (n, M)
            grad = xp.sqrt(xp.sum(s * s * dist2, axis=-1)) * scale
            out[f"max_weight_{tag}"] = st["max_weight"]
            out[f"entropy_{tag}"] = st["entropy"]
            out[f"jacobian_fro_{tag}"] = st["jacobian_fro"]
            out[f"grad_q_fro_{tag}"] = grad
            out[f"saturated_{tag}"] = st["max_weight"] > SATURATION_THRESHOLD
            out[f"grad_vanished_{tag}"] = grad < VANISHED_THRESHOLD
        return out
