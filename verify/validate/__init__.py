"""The validate battery: checks anyone's attention implementation and names the fault.

Building blocks shared with crosscheck and our own tests: :mod:`.result` (what a run returns) and
:mod:`.tolerance` (the rule err(candidate) <= k err(plain, same precision) + floor).
"""

from verify.validate.result import Measurement, PropertyResult, Status, ValidationResult
from verify.validate.tolerance import relative_error, rule

__all__ = ["Measurement", "PropertyResult", "Status", "ValidationResult", "relative_error", "rule"]
