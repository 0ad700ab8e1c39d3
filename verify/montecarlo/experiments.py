"""The four experiments of the scaling argument, as sweeps over d_k with verdicts.

1. ``variance_sweep``: Var(q·k) against ``d_k (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2)``
   (= d_k for standardised components, Vaswani et al. 2017 footnote 4; seed 003 Teorema 6).
2. ``variance_sweep(scaled=True)``: Var(q·k / sqrt(d_k)) against 1 (seed 003 Lema 6).
3. ``projected_sweep``: q = x W^Q, k = x' W^K with N(0, 1/D) projections, against the exact
   values of :mod:`verify.montecarlo.theory` and against the naive ``d_k``.
4. ``saturation_sweep``: softmax saturation and gradients, raw against scaled scores, with the
   ordering findings that bear on seed 003's Corolário 3 and Corolário 4.

Every check of a sweep shares one family error rate ``alpha`` (Bonferroni: each interval is at
``alpha / tests``) and one equivalence ``margin`` (:mod:`verdict`): variances are SUPPORTED
only when their interval lies within ``theta0 (1 +- margin)``, means when theirs lies within
``theta0 +- margin * sd``, sd the predicted standard deviation of the sampled quantity (a mean of
0 has no relative scale). Each d_k draws from its own stream ``SeedSequence(seed, spawn_key=(tag, ...))``.

Every sweep takes ``stop=`` (a ``threading.Event``): once set, the point in progress ends after
its current block and no new point starts; the sweep comes back ``incomplete`` with what finished.
Every sweep takes ``executor=`` too (a ``concurrent.futures.Executor`` or a ``distributed.Client``,
passed to :func:`run_mc`): its points' blocks then run there, with the same results.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._checks import check_alpha, check_dks, check_int, check_margin, check_positive_float
from .distributions import get_distribution
from .engine import MEMORY_LIMIT, format_bytes, run_mc
from .results import MCResult, _jsonable, format_number
from .samplers import DotSampler, ProjectedSampler, SaturationSampler
from .theory import softmax_jacobian_fro_bound
from .verdict import DEFAULT_MARGIN, INCONCLUSIVE, REFUTED, SUPPORTED, check_equal, compare

__all__ = [
    "DEFAULT_DKS",
    "SweepPoint",
    "Sweep",
    "variance_sweep",
    "projected_sweep",
    "saturation_sweep",
    "SOURCES",
    "SATURATION_FINDINGS",
]

#: d_k = 1, 2, 4, ..., 4096.
DEFAULT_DKS = tuple(2**i for i in range(13))

#: Spawn-key tags of the experiments' streams.
TAGS = {"variance": 1, "scaled": 2, "projected": 3, "saturation": 4, "weights": 5}

#: Where the value a check compares with comes from (a check's ``source``). The documents' own
#: wording of these results stays with the documents (e.g. proofs/catalogue/seed_003.py).
SOURCES = {
    "vaswani": "Vaswani et al. 2017, footnote 4 (Var(q·k) = d_k for independent components, mean 0, variance 1)",
    "scaled": "the 1/sqrt(d_k) scale of Vaswani et al. 2017 (Var(q·k/sqrt(d_k)) = 1)",
    "derived": "closed form of verify.montecarlo.theory (cross-checked with SymPy in the tests)",
}

HEAVY_TAIL_NOTE = (
    "components with an infinite 8th moment (t5): the variance interval under-covers in its tail "
    "unless samples * alpha is large (benchmarks/bench_calibration.py), so its checks give no "
    "verdict below that"
)


@dataclass(frozen=True)
class SweepPoint:
    """One d_k of a sweep: the run, the predictions and the checks."""

    d_k: int
    result: MCResult
    predicted: dict
    checks: tuple = ()

    def to_dict(self) -> dict:
        return _jsonable({
            "d_k": self.d_k, "predicted": self.predicted,
            "checks": [c.to_dict() for c in self.checks], "result": self.result.to_dict(),
        })

    def summary(self) -> str:
        verdicts = ", ".join(c.verdict for c in self.checks)
        return f"d_k={self.d_k}: {self.result.summary()}" + (f" -> {verdicts}" if verdicts else "")


@dataclass(frozen=True)
class Sweep:
    """A sweep over d_k: the points, the family error rate and the verdicts.

    Attributes
    ----------
    experiment : str
        ``"variance"``, ``"scaled"``, ``"projected"`` or ``"saturation"``.
    params : dict
    seed : int
        Root entropy; point streams are ``SeedSequence(seed, spawn_key=...)`` (logged per run).
    alpha : float
        Family error rate.
    tests : int
        Number of checks and comparisons sharing ``alpha``.
    points : tuple of SweepPoint
    findings : tuple of Comparison
        Ordering verdicts across points (saturation).
    seconds : float
    incomplete : bool
    """

    experiment: str
    params: dict
    seed: int
    alpha: float
    tests: int
    points: tuple
    findings: tuple = ()
    seconds: float = 0.0
    incomplete: bool = False

    @property
    def checks(self) -> list:
        return [c for p in self.points for c in p.checks]

    @property
    def verdicts(self) -> list:
        return [c.verdict for c in self.checks] + [f.verdict for f in self.findings]

    def to_dict(self) -> dict:
        return _jsonable({
            "experiment": self.experiment, "params": self.params, "seed": self.seed,
            "alpha": self.alpha, "tests": self.tests, "seconds": self.seconds,
            "incomplete": self.incomplete, "summary": self.summary(),
            "points": [p.to_dict() for p in self.points],
            "findings": [f.to_dict() for f in self.findings],
        })

    def summary(self) -> str:
        v = self.verdicts
        counts = ", ".join(f"{v.count(k)} {k}" for k in (SUPPORTED, REFUTED, INCONCLUSIVE) if v.count(k))
        dks = [p.d_k for p in self.points]
        span = f"d_k {dks[0]}..{dks[-1]} ({len(dks)} values)" if dks else "no d_k completed"
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{self.experiment} sweep ({params}; {span}): {counts or 'no verdicts'} at family "
            f"alpha={self.alpha:g} (Bonferroni over {self.tests}), seed={self.seed}, {self.seconds:.3g} s"
            + (" INCOMPLETE" if self.incomplete else "")
        )

    def __str__(self) -> str:
        return self.summary()


def _root_seed(seed: Any) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    return check_int("seed", seed, minimum=0)


def _mean_margin(margin: float, variance: float) -> float:
    """Absolute margin of a mean check: ``margin`` standard deviations of the sampled quantity."""
    return margin * math.sqrt(variance) if variance > 0 else margin


def _run(sampler, key, root, alpha, run_kw, label) -> MCResult:
    return run_mc(sampler, seed=np.random.SeedSequence(root, spawn_key=key), alpha=alpha,
                  description=label, **run_kw)


def _run_kwargs(samples, rel_error, variance_method, backend, workers, block_size, chunk_size, progress,
                memory_limit, stop, executor) -> dict:
    return dict(samples=samples, rel_error=rel_error, variance_method=variance_method, backend=backend,
                workers=workers, block_size=block_size, chunk_size=chunk_size, progress=progress,
                memory_limit=memory_limit, stop=stop, executor=executor)


def _stopped(stop) -> bool:
    """True once a caller's cancellation event (``stop=``) is set: the sweep starts no new point."""
    return stop is not None and stop.is_set()


def _check_widths(d_ks, elements, formula: str, memory_limit) -> None:
    """Refuse, before any run, a d_k whose one sample would not fit in ``memory_limit``.

    ``elements(d)`` is the float64 numbers one sample holds at ``d_k = d`` (increasing in d).
    """
    limit = MEMORY_LIMIT if memory_limit is None else check_int("memory_limit", memory_limit, minimum=1)
    for d in d_ks:
        if 8 * elements(d) > limit:
            lo, hi = 0, d  # largest d_k that fits: elements is increasing
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if 8 * elements(mid) <= limit else (lo, mid)
            fits = f"at most d_k={lo:,} fits" if lo else "no d_k fits"
            raise ValueError(
                f"d_k={d:,} needs about {format_bytes(8 * elements(d))} per sample ({elements(d):,} float64 "
                f"numbers, {formula}), over memory_limit={format_bytes(limit)}; {fits} (or raise memory_limit)"
            )


def variance_sweep(
    d_ks: Sequence[int] = DEFAULT_DKS,
    *,
    dist: str = "normal",
    mean_q: float = 0.0,
    mean_k: float = 0.0,
    std_q: float = 1.0,
    std_k: float = 1.0,
    scaled: bool = False,
    samples: int = 100_000,
    rel_error: float | None = None,
    seed: int | None = None,
    alpha: float = 1e-6,
    margin: float = DEFAULT_MARGIN,
    variance_method: str = "auto",
    backend: str = "numpy",
    workers: int | None = None,
    block_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    memory_limit: int | None = None,
    stop: Any = None,
    executor: Any = None,
) -> Sweep:
    """Experiments 1 and 2: Var(q·k) (or of q·k/sqrt(d_k) when ``scaled``) across ``d_ks``.

    Checks per d_k: the variance against the general formula, the mean against
    ``d_k mu_q mu_k``; and, when the components are not standardised, the variance against the
    document's value (``d_k``, or 1 when scaled), which then should be REFUTED. ``margin`` is the
    equivalence margin of every check (module docstring); a claim whose interval is wider than it
    is INCONCLUSIVE, with the samples that would settle it.

    Returns
    -------
    Sweep
    """
    d_ks = check_dks(d_ks)
    alpha = check_alpha(alpha)
    margin = check_margin(margin)
    dist_obj = get_distribution(dist)
    _check_widths(d_ks, lambda d: 2 * d, "q and k", memory_limit)
    root = _root_seed(seed)
    samplers = [DotSampler(d, dist_obj, mean_q, mean_k, std_q, std_k, scaled) for d in d_ks]
    standard = (mean_q, mean_k, std_q, std_k) == (0.0, 0.0, 1.0, 1.0)
    per_point = 2 if standard else 3
    tests = per_point * len(d_ks)
    run_kw = _run_kwargs(samples, rel_error, variance_method, backend, workers, block_size, chunk_size, progress,
                         memory_limit, stop, executor)
    name = "scaled" if scaled else "variance"
    label = "q·k/sqrt(d_k)" if scaled else "q·k"
    note = HEAVY_TAIL_NOTE if dist_obj.finite_moments < 8 else ""
    points, t0, incomplete = [], time.perf_counter(), False
    for d, sampler in zip(d_ks, samplers):
        if _stopped(stop):
            incomplete = True
            break
        res = _run(sampler, (TAGS[name], d), root, alpha / tests, run_kw, f"{name} d_k={d}")
        mean, var = sampler.predicted()
        checks = [
            check_equal(res, var, statistic="variance", alpha=alpha, tests=tests, margin=margin,
                        claim=f"Var({label}) = {format_number(var)} (general formula at d_k={d})",
                        source=SOURCES["derived"], note=note),
            check_equal(res, mean, statistic="mean", alpha=alpha, tests=tests, margin=margin,
                        abs_margin=_mean_margin(margin, var),
                        claim=f"E[{label}] = {format_number(mean)} (d_k mu_q mu_k{' / sqrt(d_k)' if scaled else ''})",
                        source=SOURCES["derived"]),
        ]
        if not standard:
            doc = 1.0 if scaled else float(d)
            checks.append(check_equal(
                res, doc, statistic="variance", alpha=alpha, tests=tests, margin=margin,
                claim=f"Var({label}) = {format_number(doc)} (the document's value, which assumes mean 0, variance 1)",
                source=SOURCES["scaled" if scaled else "vaswani"], note=note))
        points.append(SweepPoint(d, res, {"mean": mean, "variance": var}, tuple(checks)))
        if res.incomplete:
            incomplete = True
            break
    params = {"dist": dist_obj.name, "mean_q": mean_q, "mean_k": mean_k, "std_q": std_q, "std_k": std_k,
              "samples": samples, "rel_error": rel_error, "variance_method": variance_method, "backend": backend,
              "margin": margin}
    return Sweep(name, params, root, alpha, tests, tuple(points), (), time.perf_counter() - t0, incomplete)


def projected_sweep(
    d_ks: Sequence[int] = DEFAULT_DKS[:9],
    *,
    d_model: int = 16,
    same_token: bool = False,
    weights: str = "fresh",
    dist: str = "normal",
    samples: int = 100_000,
    rel_error: float | None = None,
    seed: int | None = None,
    alpha: float = 1e-6,
    margin: float = DEFAULT_MARGIN,
    variance_method: str = "auto",
    backend: str = "numpy",
    workers: int | None = None,
    block_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    memory_limit: int | None = None,
    stop: Any = None,
    executor: Any = None,
) -> Sweep:
    """Experiment 3: self-attention scores ``x W^Q · x' W^K`` across ``d_ks``.

    Checks per d_k: the variance against the exact value (``d_k (1 + (kappa-1)/D)`` for
    ``x' = x``, ``d_k`` for independent tokens, with fresh weights; the conditional values
    ``||A||_F^2 (+ tr A^2 + (kappa-3) sum A_ii^2)`` with fixed weights), the mean against its
    exact value, and the variance against the naive ``d_k`` whenever that differs.
    """
    d_ks = check_dks(d_ks)
    alpha = check_alpha(alpha)
    margin = check_margin(margin)
    d_model = check_int("d_model", d_model, minimum=1)
    dist_obj = get_distribution(dist)
    if weights == "fresh":
        _check_widths(d_ks, lambda d: 2 * d_model + 2 * d + 2 * d_model * d, "x, x', q, k and fresh W^Q, W^K",
                      memory_limit)
    else:  # the fixed W^Q, W^K (D, K) are drawn once, when the samplers are built
        _check_widths(d_ks, lambda d: 2 * d_model * d, "the fixed W^Q and W^K", memory_limit)
        _check_widths(d_ks, lambda d: 2 * d_model + 2 * d, "x, x', q and k", memory_limit)
    root = _root_seed(seed)
    samplers = [
        ProjectedSampler(d, d_model, same_token, weights, dist_obj,
                         np.random.SeedSequence(root, spawn_key=(TAGS["weights"], d)) if weights == "fixed" else None)
        for d in d_ks
    ]
    plans = []
    for d, s in zip(d_ks, samplers):
        mean, var = s.predicted()
        plans.append((mean, var, var != float(d)))
    tests = sum(3 if extra else 2 for _, _, extra in plans)
    run_kw = _run_kwargs(samples, rel_error, variance_method, backend, workers, block_size, chunk_size, progress,
                         memory_limit, stop, executor)
    label = "x W^Q · x W^K" if same_token else "x W^Q · x' W^K"
    kind = "exact (fresh-weights ensemble)" if weights == "fresh" else "exact given the fixed W^Q, W^K"
    note = HEAVY_TAIL_NOTE if dist_obj.finite_moments < 8 else ""
    points, t0, incomplete = [], time.perf_counter(), False
    for d, s, (mean, var, extra) in zip(d_ks, samplers, plans):
        if _stopped(stop):
            incomplete = True
            break
        res = _run(s, (TAGS["projected"], int(same_token), d), root, alpha / tests, run_kw, f"projected d_k={d}")
        checks = [
            check_equal(res, var, statistic="variance", alpha=alpha, tests=tests, margin=margin,
                        claim=f"Var({label}) = {format_number(var)} ({kind}, d_k={d}, D={d_model})",
                        source=SOURCES["derived"], note=note),
            check_equal(res, mean, statistic="mean", alpha=alpha, tests=tests, margin=margin,
                        abs_margin=_mean_margin(margin, var),
                        claim=f"E[{label}] = {format_number(mean)} ({kind})", source=SOURCES["derived"]),
        ]
        if extra:
            checks.append(check_equal(res, float(d), statistic="variance", alpha=alpha, tests=tests, margin=margin,
                                      claim=f"Var({label}) = d_k = {d} (the naive value)",
                                      source=SOURCES["vaswani"], note=note))
        predicted = {"mean": mean, "variance": var, "ensemble_variance": s.ensemble_predicted()[1]}
        points.append(SweepPoint(d, res, predicted, tuple(checks)))
        if res.incomplete:
            incomplete = True
            break
    params = {"d_model": d_model, "same_token": same_token, "weights": weights, "dist": dist_obj.name,
              "samples": samples, "rel_error": rel_error, "variance_method": variance_method, "backend": backend,
              "margin": margin}
    return Sweep("projected", params, root, alpha, tests, tuple(points), (), time.perf_counter() - t0, incomplete)


#: The saturation findings: stable key (a finding's ``source``) -> (claim, compare arguments);
#: "hi"/"lo" = largest/smallest d_k. p = softmax(s) are the weights, s the scores.
SATURATION_FINDINGS = {
    "jacobian-raw-grows": (
        "unscaled, the softmax Jacobian in the scores, mean ||diag(p) - p p^T||_F with p = softmax(s), grows "
        "with d_k (largest d_k > smallest)", ("hi", "lo", ">", "jacobian_fro_raw", None, "mean")),
    "query-gradient-raw-grows": (
        "unscaled, the mean Jacobian of the weights in the query, ||ds/dq||_F = ||J K||_F, grows with d_k "
        "(largest d_k > smallest)", ("hi", "lo", ">", "grad_q_fro_raw", None, "mean")),
    "saturation-raw-grows": (
        "unscaled, the softmax saturates as d_k grows (share of rows with max weight > 0.99: largest d_k > smallest)",
        ("hi", "lo", ">", "saturated_raw", None, "fraction")),
    "entropy-raw-falls": (
        "unscaled, the attention entropy falls as d_k grows (largest d_k < smallest)",
        ("hi", "lo", "<", "entropy_raw", None, "mean")),
    "scaled-less-saturated": (
        "at the largest d_k, scaling by 1/sqrt(d_k) lowers the saturated share (scaled < raw)",
        ("hi", "hi", "<", "saturated_scaled", "saturated_raw", "fraction")),
    "scaled-fewer-vanished": (
        "at the largest d_k, fewer rows have a vanished query gradient (||ds/dq||_F < 1e-3) scaled than raw",
        ("hi", "hi", "<", "grad_vanished_scaled", "grad_vanished_raw", "fraction")),
    "scaled-larger-jacobian": (
        "at the largest d_k, the scaled softmax has the larger Jacobian in the scores (scaled > raw): scaling "
        "keeps it from vanishing, there is no explosion to prevent", ("hi", "hi", ">", "jacobian_fro_scaled",
                                                                        "jacobian_fro_raw", "mean")),
}


def saturation_sweep(
    d_ks: Sequence[int] = DEFAULT_DKS,
    *,
    n_keys: int = 16,
    dist: str = "normal",
    samples: int = 10_000,
    rel_error: float | None = None,
    seed: int | None = None,
    alpha: float = 1e-6,
    backend: str = "numpy",
    workers: int | None = None,
    block_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    memory_limit: int | None = None,
    stop: Any = None,
    executor: Any = None,
) -> Sweep:
    """Experiment 4: saturation and gradients of softmax over ``n_keys`` keys, raw and scaled.

    Each point estimates, raw and scaled: mean largest weight, mean entropy, mean
    ``||diag(p) - p p^T||_F`` (p = softmax(s), s the scores), mean ``||ds/dq||_F`` and the share of
    rows with largest weight above 0.99. With at least two d_k, the findings compare the smallest
    and the largest d_k (and raw against scaled at the largest) with the ordering rule of
    :func:`verdict.compare`; each finding's ``source`` is its key in :data:`SATURATION_FINDINGS`.
    ``rel_error`` watches the mean raw Jacobian norm.
    """
    d_ks = check_dks(d_ks)
    alpha = check_alpha(alpha)
    n_keys = check_int("n_keys", n_keys, minimum=2)
    dist_obj = get_distribution(dist)
    _check_widths(d_ks, lambda d: 3 * (n_keys + 1) * d, f"3 (n_keys + 1) d_k with n_keys={n_keys}", memory_limit)
    root = _root_seed(seed)
    findings_spec = [(key, claim, spec) for key, (claim, spec) in SATURATION_FINDINGS.items()
                     if len(d_ks) > 1 or spec[0] == spec[1]]
    tests = max(1, len(findings_spec))
    run_kw = _run_kwargs(samples, rel_error, "fourth-moment", backend, workers, block_size, chunk_size, progress,
                         memory_limit, stop, executor)
    points, t0, incomplete = [], time.perf_counter(), False
    for d in d_ks:
        if _stopped(stop):
            incomplete = True
            break
        s = SaturationSampler(d, n_keys, dist_obj)
        res = _run(s, (TAGS["saturation"], d), root, alpha / tests, run_kw, f"saturation d_k={d}")
        points.append(SweepPoint(d, res, {"jacobian_fro_bound": softmax_jacobian_fro_bound(n_keys)}))
        if res.incomplete:
            incomplete = True
            break
    findings = []
    if points and not incomplete:
        by = {"lo": points[0].result, "hi": points[-1].result}
        lo_d, hi_d = points[0].d_k, points[-1].d_k
        for key, claim, (a, b, rel, out_a, out_b, stat) in findings_spec:
            text = claim.replace("the largest d_k", f"d_k={hi_d}").replace("largest d_k", f"d_k={hi_d}")
            text = text.replace("smallest", f"d_k={lo_d}")
            findings.append(compare(by[a], by[b], rel, output=out_a, output_b=out_b, statistic=stat,
                                    alpha=alpha, tests=tests, claim=text, source=key))
    params = {"n_keys": n_keys, "dist": dist_obj.name, "samples": samples, "rel_error": rel_error, "backend": backend}
    return Sweep("saturation", params, root, alpha, tests, tuple(points), tuple(findings),
                 time.perf_counter() - t0, incomplete)
