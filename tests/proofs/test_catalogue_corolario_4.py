"""Seed 003, Corolário 4: "for unscaled scores s the gradient magnitude is proportional to exp(||s||)".

What the table shows must be a statement a referee would sign: every measured number with its
interval, no claim the same check's other findings contradict, and a verdict that follows the
evidence (a faked sweep in which the Jacobian grows must not be reported as a refutation by the
measurement; the exact bound still refutes the exp(||s||) law).
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from proofs.catalogue import claims_for, seed_003
from proofs.claims import Claim, Method, Source, Verdict

JACOBIAN = ("unscaled, the softmax Jacobian in the scores, mean ||diag(p) - p p^T||_F with p = softmax(s), grows with d_k "
            "(d_k=4096 > d_k=1)")
QUERY = "unscaled, the mean Jacobian of the weights in the query, ||ds/dq||_F = ||J K||_F, grows with d_k"
SCALED = "at d_k=4096, the scaled softmax has the larger Jacobian in the scores (scaled > raw)"

_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_TRIPLE = re.compile(rf"({_NUMBER}) \[({_NUMBER}), ({_NUMBER})\]")


def _bare_decimals(text: str) -> list[str]:
    """Decimal numbers in ``text`` that are not an estimate followed by its interval. Integers
    (d_k, key and draw counts), 1/2 and the stated error rates are exact or bookkeeping."""
    rest = _TRIPLE.sub(" ", text)
    rest = re.sub(rf"alpha (?:= )?{_NUMBER}", " ", rest)
    return re.findall(r"\d+\.\d+|\d+e-\d+", rest)


def _estimates(finding) -> list:
    return [finding.a, finding.b]


def _triples_match_estimates(text: str, estimates) -> None:
    """Each ``x [lo, hi]`` in ``text`` is one of ``estimates``, with an interval at least as wide."""
    triples = [tuple(float(v) for v in m) for m in _TRIPLE.findall(text)]
    assert triples, text
    for x, lo, hi in triples:
        assert any(math.isclose(x, e.estimate, rel_tol=5e-3) and lo <= e.low and hi >= e.high for e in estimates), \
            (x, lo, hi)


# ---------------------------------------------------------------- the real sweep

@pytest.fixture(scope="module")
def real():
    return seed_003.check_gradient_growth_monte_carlo(), seed_003._saturation()[0]


def test_real_summary_is_interval_backed_and_states_both_readings(real):
    out, sweep = real
    summary = out.evidence[0].summary
    assert out.verdict is Verdict.REFUTED and out.method is Method.STATISTICAL
    assert _bare_decimals(summary) == [], summary
    cor4 = seed_003._findings(sweep, seed_003.COROLARIO_4).values()
    _triples_match_estimates(summary, [e for f in cor4 for e in _estimates(f)])
    jac = out.evidence[0].data["decisive"]
    assert jac["verdict"] == "REFUTED" and "Jacobian in the scores" in jac["claim"]
    assert "||J||_2 <= 1/2 for every s (exact)" in summary
    # limited to the Jacobian in the scores: no general "gradients do not explode / vanish"
    assert "do not explode" not in summary and "gradients vanish" not in summary


def test_real_summary_agrees_with_also_measured(real):
    out, _ = real
    summary, data = out.evidence[0].summary, out.evidence[0].data
    query = [s for s in data["also_measured"] if "||ds/dq||_F" in s and "grows with d_k" in s]
    assert len(query) == 1
    said = {"SUPPORTED": "The gradient in the query rises", "REFUTED": "The gradient in the query falls"}
    verdict = query[0].split(":")[0]
    assert said.get(verdict, "The gradient in the query shows no significant change") in summary
    assert data["query_gradient"]["verdict"] == verdict
    if verdict == "SUPPORTED":  # the unscaled gradient in q does grow: the summary must not deny it
        assert "cannot grow like exp(||s||)" in summary


def test_table_shows_the_interval_backed_statement():
    claim = next(c for c in claims_for("003") if c.id == "seed003.corolario-4")
    result = claim.run()
    assert result.verdict is Verdict.REFUTED
    assert result.outcomes[0].method is Method.STATISTICAL  # the table shows the first deciding check
    assert result.summary == result.outcomes[0].evidence[0].summary
    assert _bare_decimals(result.summary) == []


def test_exact_check_carries_no_monte_carlo_number():
    out = seed_003.check_gradient_growth()
    assert (out.verdict, out.method) == (Verdict.REFUTED, Method.SYMBOLIC)
    assert [e.kind for e in out.evidence[:2]] == ["counterexample", "derivation"]
    steps = out.evidence[1].data["steps"]
    assert steps and all(s["passed"] and s["checked"] for s in steps)
    for s in steps:  # every verified step is exact: no mean of random draws marked as verified
        assert s["method"].startswith(("symbolic", "sympy", "checked derivation")), s
        assert not re.search(r"\d+\.\d+", s["reason"]), s
    math = out.evidence[1].latex.replace(r"\parbox[t]{0.3\linewidth}", "")  # the reasons' column width
    assert not re.search(r"\d+\.\d+", math), math
    for e in out.evidence[:2]:
        assert not re.search(r"\d+\.\d+", e.summary), e.summary
    text = out.evidence[0].summary
    assert "||J||_2 <= 1/2 for every s" in text and "ds/dq" in text and "exp(||s||/sqrt(d_k))" in text


# ---------------------------------------------------------------- faked sweeps

def _estimate(estimate, low, high):
    return SimpleNamespace(quantity="E[fake]", estimate=estimate, low=low, high=high, alpha=1e-7, samples=2000)


_KEYS = {JACOBIAN: "jacobian-raw-grows", QUERY: "query-gradient-raw-grows", SCALED: "scaled-larger-jacobian"}


def _finding(verdict, claim, a, b):
    return SimpleNamespace(source=_KEYS[claim], verdict=verdict, claim=claim, a=_estimate(*a), b=_estimate(*b),
                           family_alpha=1e-6, reason="no verdict: the intervals overlap",
                           summary=lambda: f"{verdict}: {claim}", to_dict=lambda: {"verdict": verdict})


def _fake(monkeypatch, tmp_path, jacobian, query=None, scaled=None):
    findings = [f for f in (jacobian, query, scaled) if f is not None]
    sweep = SimpleNamespace(findings=findings, to_dict=lambda: {"experiment": "saturation"},
                            points=[SimpleNamespace(d_k=1), SimpleNamespace(d_k=4096)],
                            params={"n_keys": 16, "dist": "normal"})
    monkeypatch.setattr(seed_003, "_saturation", lambda: (sweep, ([str(tmp_path / "fig.png")], [])))
    return findings


GROWING = dict(a=(0.6, 0.55, 0.65), b=(0.28, 0.27, 0.29))
FALLING = dict(a=(0.03, 0.02, 0.04), b=(0.28, 0.27, 0.29))


def test_a_growing_jacobian_is_not_refuted_by_the_measurement(monkeypatch, tmp_path):
    findings = _fake(monkeypatch, tmp_path, _finding("SUPPORTED", JACOBIAN, **GROWING),
                     _finding("SUPPORTED", QUERY, a=(3.0, 2.5, 3.5), b=(0.25, 0.24, 0.26)))
    out = seed_003.check_gradient_growth_monte_carlo()
    summary = out.evidence[0].summary
    assert out.verdict is Verdict.INCONCLUSIVE  # a rise is the document's direction, not proof of exp(||s||)
    assert "rises" in summary and "falls" not in summary and "instead of growing" not in summary
    assert _bare_decimals(summary) == []
    _triples_match_estimates(summary, [e for f in findings for e in _estimates(f)])
    # the claim is still REFUTED, by the exact check, and the table then shows the exact reason
    claim = Claim("t.cor4", "t", Source("003", "Corolário 4"), "$x$",
                  [seed_003.check_gradient_growth_monte_carlo, seed_003.check_gradient_growth])
    result = claim.run()
    assert result.verdict is Verdict.REFUTED
    assert [o.verdict for o in result.outcomes] == [Verdict.INCONCLUSIVE, Verdict.REFUTED]
    assert result.summary.startswith("exact") and _bare_decimals(result.summary) == []


def test_a_falling_jacobian_refutes_and_the_query_gradient_is_reported_as_measured(monkeypatch, tmp_path):
    for verdict, words in (("SUPPORTED", "rises"), ("REFUTED", "falls"), ("INCONCLUSIVE", "shows no significant change")):
        findings = _fake(monkeypatch, tmp_path, _finding("REFUTED", JACOBIAN, **FALLING),
                         _finding(verdict, QUERY, a=(1.7, 1.0, 2.4), b=(0.26, 0.25, 0.27)),
                         _finding("SUPPORTED", SCALED, a=(0.31, 0.30, 0.32), b=(0.03, 0.02, 0.04)))
        out = seed_003.check_gradient_growth_monte_carlo()
        summary = out.evidence[0].summary
        assert out.verdict is Verdict.REFUTED
        assert "scores falls from 0.280 [0.270, 0.290] at d_k = 1 to 0.0300 [0.0200, 0.0400] at d_k = 4096" in summary
        assert f"The gradient in the query {words}: unscaled, E||ds/dq||_F goes from 0.260 [0.250, 0.270] at " \
               f"d_k = 1 to 1.70 [1.00, 2.40] at d_k = 4096" in summary
        assert "scaled, it is 0.310 [0.300, 0.320] at d_k = 4096, larger" in summary
        assert _bare_decimals(summary) == []
        _triples_match_estimates(summary, [e for f in findings for e in _estimates(f)])


def test_an_overlapping_comparison_is_inconclusive_with_its_reason(monkeypatch, tmp_path):
    _fake(monkeypatch, tmp_path, _finding("INCONCLUSIVE", JACOBIAN, a=(0.27, 0.2, 0.34), b=(0.28, 0.27, 0.29)))
    out = seed_003.check_gradient_growth_monte_carlo()
    assert out.verdict is Verdict.INCONCLUSIVE
    assert "shows no significant change" in out.evidence[0].summary and "overlap" in out.evidence[0].summary


def test_an_interval_above_an_exact_ceiling_is_a_defect_not_a_verdict(monkeypatch, tmp_path):
    # ||J||_F < 1/sqrt(2) for every score vector: a whole interval above it is a bug somewhere
    _fake(monkeypatch, tmp_path, _finding("SUPPORTED", JACOBIAN, a=(0.9, 0.8, 1.0), b=(0.28, 0.27, 0.29)))
    with pytest.raises(RuntimeError, match="exact ceiling"):
        seed_003.check_gradient_growth_monte_carlo()
    # E||ds/dq||_F <= sqrt(16 d_k) / 2 = 2 at d_k = 1
    _fake(monkeypatch, tmp_path, _finding("REFUTED", JACOBIAN, **FALLING),
          _finding("SUPPORTED", QUERY, a=(3.0, 2.5, 3.5), b=(2.5, 2.2, 2.8)))
    with pytest.raises(RuntimeError, match="exact ceiling"):
        seed_003.check_gradient_growth_monte_carlo()


def test_the_bare_number_detector_itself():
    assert _bare_decimals("mean 0.262 at d_k = 4 -> 0.0225 at d_k = 1024") == ["0.262", "0.0225"]
    assert _bare_decimals("0.281 [0.276, 0.287] at d_k = 1, alpha = 7.14e-08, 2,000 draws, <= 1/2") == []
