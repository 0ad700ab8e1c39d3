"""The tolerance rule and the result objects that the battery, crosscheck and our tests share."""

from __future__ import annotations

import numpy as np
import pytest

from verify.validate import PropertyResult, Status, ValidationResult, relative_error, rule
from verify.validate.tolerance import UNIT_ROUNDOFF, dtype_name, floor


def test_rule_passes_a_result_as_accurate_as_plain_and_fails_one_rounded_to_a_lower_precision():
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(1000)
    plain32 = exact.astype(np.float32)
    assert rule(plain32, plain32, exact, dtype="float32").ok
    in_bfloat16 = exact * (1 + 2.0**-8)  # an error of bfloat16's unit roundoff
    measured = rule(in_bfloat16, plain32, exact, dtype="float32")
    assert not measured.ok and measured.error > measured.bound


def test_floor_is_sixteen_units_of_roundoff():
    assert floor("float32") == 16 * 2.0**-24 and floor(np.float64) == 16 * 2.0**-53
    assert set(UNIT_ROUNDOFF) == {"float64", "float32", "float16", "bfloat16"}


def test_non_finite_candidate_never_passes():
    exact = np.ones(4)
    assert relative_error(np.array([1, 1, np.nan, 1]), exact) == float("inf")
    assert not rule(np.array([1, 1, np.inf, 1]), exact, exact, dtype="float64").ok


def test_all_zero_reference_gives_the_absolute_error():
    assert relative_error(np.array([0.0, 1e-3]), np.zeros(2)) == pytest.approx(1e-3)


def test_shape_mismatch_and_unknown_dtype_are_named():
    with pytest.raises(ValueError, match=r"same shape: actual has shape \(2,\), expected has shape \(3,\)"):
        relative_error(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="dtype must be one of .* got 'int32'"):
        dtype_name("int32")


def test_validation_result_passes_only_when_every_applicable_property_passes():
    ok = PropertyResult("agreement", Status.PASS, "agrees")
    na = PropertyResult("causality", Status.NOT_APPLICABLE, "the function takes no causal=")
    assert ValidationResult("f", "sdpa", (ok, na)).passed
    for bad in (Status.FAIL, Status.ERROR, Status.TIMEOUT):
        result = ValidationResult("f", "sdpa", (ok, PropertyResult("scale", bad, "uses 1/d_k")))
        assert not result.passed and [p.name for p in result.failures] == ["scale"]
    assert not ValidationResult("f", "sdpa", (na,)).passed, "nothing applicable is no evidence"
    assert ValidationResult("f", "sdpa", (ok,))["agreement"] is ok
    with pytest.raises(KeyError, match="no property named 'mask'"):
        ValidationResult("f", "sdpa", (ok,))["mask"]
