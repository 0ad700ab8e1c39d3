"""Seed 003's variance claims from Monte Carlo: an INCONCLUSIVE check is never support, nor a
refutation (issue 7, item 1: absence of evidence is not support)."""

from types import SimpleNamespace

import pytest

from proofs.catalogue import seed_003
from proofs.claims import Method, Verdict
from verify.montecarlo import experiments as X
from verify.montecarlo import plots


def _fake_variance_sweep(monkeypatch, tmp_path, verdicts):
    checks = [SimpleNamespace(verdict=v, summary=lambda v=v, i=i: f"{v}: Var = 1 (d_k={i})") for i, v in enumerate(verdicts)]
    sweep = SimpleNamespace(verdicts=verdicts, checks=checks, incomplete=False, summary=lambda: "fake sweep",
                            to_dict=lambda: {"experiment": "scaled"})
    monkeypatch.setattr(X, "variance_sweep", lambda *a, **k: sweep)
    monkeypatch.setattr(plots, "plot_sweep", lambda sweep, path: path)
    monkeypatch.setattr(seed_003, "write_figure", lambda draw, name: ([str(tmp_path / name)], []))


@pytest.mark.parametrize("verdicts,expected", [
    (["SUPPORTED"] * 4, Verdict.SUPPORTED),
    (["SUPPORTED", "REFUTED", "SUPPORTED", "SUPPORTED"], Verdict.REFUTED),
    (["INCONCLUSIVE", "REFUTED", "SUPPORTED", "SUPPORTED"], Verdict.REFUTED),
])
def test_variance_check_combines_the_sweep_verdicts(monkeypatch, tmp_path, verdicts, expected):
    _fake_variance_sweep(monkeypatch, tmp_path, verdicts)
    out = seed_003.check_variance_monte_carlo(scaled=True)
    assert (out.verdict, out.method) == (expected, Method.STATISTICAL)


def test_an_inconclusive_variance_check_is_inconclusive_never_refuted_nor_supported(monkeypatch, tmp_path):
    # before: every non-SUPPORTED check made the claim REFUTED, INCONCLUSIVE ones included
    _fake_variance_sweep(monkeypatch, tmp_path, ["SUPPORTED", "INCONCLUSIVE", "SUPPORTED", "SUPPORTED"])
    out = seed_003.check_variance_monte_carlo(scaled=True)
    assert out.verdict is Verdict.INCONCLUSIVE
    assert "INCONCLUSIVE: Var = 1 (d_k=1)" in out.evidence[0].summary  # the undecided check, with its reason


def test_the_catalogue_budget_decides_at_the_default_margin():
    # the real sweep of Lema 6 at the catalogue's budget: every check decided, none merely "inside"
    sweep = X.variance_sweep(seed_003.MC_DKS, samples=seed_003.MC_SAMPLES, seed=seed_003.MC_SEED,
                             alpha=seed_003.MC_ALPHA, scaled=True, progress=False)
    assert sweep.verdicts == ["SUPPORTED"] * 8, [c.summary() for c in sweep.checks]
    assert all(c.margin == 0.05 for c in sweep.checks)
    # issue 14: the variance intervals are chosen per run and the evidence says which: normal
    # components have every moment finite, so the tail rule keeps the fourth-moment interval
    var = [c for c in sweep.checks if c.claim.startswith("Var")]
    assert len(var) == 4
    assert all(c.estimate.method.startswith("auto (all moments finite, sample kurtosis ")
               and c.estimate.method.endswith("-> fourth-moment (log-scale delta method)") for c in var)
    assert all("auto (all moments finite" in c.summary() for c in var)
