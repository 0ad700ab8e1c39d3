"""The Monte Carlo checks of seed 003's Corolário 3 and 4: verdicts from the saturation sweep."""

from types import SimpleNamespace

from proofs.catalogue import seed_003
from proofs.claims import Method, Verdict


def _estimate(estimate, low, high):
    return SimpleNamespace(quantity="E[fake]", estimate=estimate, low=low, high=high, alpha=1e-7, samples=2000)


def _finding(key, verdict, claim, a=(0.03, 0.02, 0.04), b=(0.28, 0.27, 0.29)):
    """A fake comparison ``a > b`` under its key in SATURATION_FINDINGS: ``a`` at the largest d_k,
    ``b`` at the smallest."""
    return SimpleNamespace(source=key, verdict=verdict, claim=claim, a=_estimate(*a), b=_estimate(*b),
                           family_alpha=1e-6, reason="no verdict: the intervals overlap",
                           summary=lambda: f"{verdict}: {claim}", to_dict=lambda: {"verdict": verdict})


def _fake_sweep(monkeypatch, findings, tmp_path):
    sweep = SimpleNamespace(findings=findings, to_dict=lambda: {"experiment": "saturation"},
                            points=[SimpleNamespace(d_k=1), SimpleNamespace(d_k=4096)],
                            params={"n_keys": 16, "dist": "normal"})
    monkeypatch.setattr(seed_003, "_saturation", lambda: (sweep, ([str(tmp_path / "fig.png")], [])))


GROWTH = "unscaled, the softmax Jacobian in the scores, mean ||diag(p) - p p^T||_F with p = softmax(s), grows with d_k"


def test_real_sweep_supports_corollary_3_and_refutes_corollary_4():
    """With the real sweep: saturation appears without the scale (cor 3), and the unscaled
    Jacobian shrinks rather than explodes (cor 4) -- as the exact bound ||J||_2 <= 1/2 says."""
    cor3 = seed_003.check_saturation_monte_carlo()
    cor4 = seed_003.check_gradient_growth_monte_carlo()
    assert (cor3.verdict, cor3.method) == (Verdict.SUPPORTED, Method.STATISTICAL)
    assert cor4.verdict is Verdict.REFUTED
    decisive = cor4.evidence[0].data["decisive"]
    assert decisive["verdict"] == "REFUTED"
    assert cor3.evidence[0].figures and cor3.evidence[0].figures == cor4.evidence[0].figures


def test_corollary_3_check_refutes_when_a_prediction_fails(monkeypatch, tmp_path):
    _fake_sweep(monkeypatch, [_finding("saturation-raw-grows", "SUPPORTED", "saturates"), _finding("entropy-raw-falls", "REFUTED", "entropy falls")],
                tmp_path)
    assert seed_003.check_saturation_monte_carlo().verdict is Verdict.REFUTED
    _fake_sweep(monkeypatch, [_finding("saturation-raw-grows", "SUPPORTED", "saturates")], tmp_path)
    assert seed_003.check_saturation_monte_carlo().verdict is Verdict.SUPPORTED


def test_corollary_4_check_follows_the_growth_comparison(monkeypatch, tmp_path):
    # a significant rise of the Jacobian is the document's direction, but two d_k cannot show growth
    # like exp(||s||): INCONCLUSIVE (the exact bound decides), never SUPPORTED and never REFUTED
    _fake_sweep(monkeypatch, [_finding("jacobian-raw-grows", "SUPPORTED", GROWTH, a=(0.5, 0.45, 0.55), b=(0.28, 0.27, 0.29)),
                              _finding("scaled-larger-jacobian", "REFUTED", "other")], tmp_path)
    out = seed_003.check_gradient_growth_monte_carlo()
    assert out.verdict is Verdict.INCONCLUSIVE
    assert "rises from 0.280 [0.270, 0.290] at d_k = 1 to 0.500 [0.450, 0.550] at d_k = 4096" in out.evidence[0].summary
    assert "falls" not in out.evidence[0].summary
    _fake_sweep(monkeypatch, [_finding("jacobian-raw-grows", "REFUTED", GROWTH)], tmp_path)
    out = seed_003.check_gradient_growth_monte_carlo()
    assert out.verdict is Verdict.REFUTED
    assert "falls from 0.280 [0.270, 0.290] at d_k = 1 to 0.0300 [0.0200, 0.0400] at d_k = 4096" in out.evidence[0].summary


def test_inconclusive_comparison_is_inconclusive_never_support(monkeypatch, tmp_path):
    _fake_sweep(monkeypatch, [_finding("saturation-raw-grows", "SUPPORTED", "saturates"), _finding("entropy-raw-falls", "INCONCLUSIVE", "entropy")],
                tmp_path)
    out = seed_003.check_saturation_monte_carlo()
    assert out.verdict is Verdict.INCONCLUSIVE and "INCONCLUSIVE: entropy" in out.evidence[0].summary
    _fake_sweep(monkeypatch, [_finding("saturation-raw-grows", "REFUTED", "saturates"), _finding("entropy-raw-falls", "INCONCLUSIVE", "entropy")],
                tmp_path)
    assert seed_003.check_saturation_monte_carlo().verdict is Verdict.REFUTED  # a failed prediction still refutes
    _fake_sweep(monkeypatch, [_finding("jacobian-raw-grows", "INCONCLUSIVE", GROWTH)], tmp_path)
    out = seed_003.check_gradient_growth_monte_carlo()
    assert out.verdict is Verdict.INCONCLUSIVE and "the intervals overlap" in out.evidence[0].summary

