"""How a claim's checks combine into one verdict, INCONCLUSIVE included."""

import pytest

from proofs.claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict, combine_verdicts

V = Verdict


@pytest.mark.parametrize("verdicts, expected", [
    ([V.PROVED, V.INCONCLUSIVE], V.PROVED),          # an undecided cross-check leaves a proof standing
    ([V.SUPPORTED, V.INCONCLUSIVE], V.SUPPORTED),
    ([V.INCONCLUSIVE], V.INCONCLUSIVE),
    ([V.INCONCLUSIVE, V.INFORMAL], V.INCONCLUSIVE),  # something mathematical was checked, undecided
    ([V.REFUTED, V.INCONCLUSIVE], V.REFUTED),
    ([V.CORRECTED, V.INCONCLUSIVE, V.SUPPORTED], V.CORRECTED),
    ([V.INFORMAL], V.INFORMAL),
])
def test_combine_verdicts_order(verdicts, expected):
    assert combine_verdicts(verdicts) is expected


def test_inconclusive_is_never_support():
    for other in (V.INCONCLUSIVE, V.INFORMAL):
        assert combine_verdicts([V.INCONCLUSIVE, other]) is not V.SUPPORTED


def test_proof_and_refutation_together_is_a_crash_not_a_verdict():
    with pytest.raises(RuntimeError, match="disagree"):
        combine_verdicts([V.PROVED, V.INCONCLUSIVE, V.REFUTED])


def test_an_inconclusive_claim_runs_and_serialises():
    def undecided():
        return CheckOutcome(V.INCONCLUSIVE, Method.STATISTICAL,
                            [Evidence("statistic", "interval [0.5, 1.6] too wide for a 5% margin; ~4e5 samples would settle it")])

    result = Claim("demo", "demo", Source("x.txt", "Lema 1"), "a = b", [undecided]).run()
    assert result.ok and result.verdict is V.INCONCLUSIVE
    assert result.to_dict()["verdict"] == "INCONCLUSIVE"
    with pytest.raises(ValueError, match="must carry evidence"):
        CheckOutcome(V.INCONCLUSIVE, Method.STATISTICAL, [])
