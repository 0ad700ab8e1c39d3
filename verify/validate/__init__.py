"""The validate battery: checks anyone's attention implementation and names the fault.

``validate(fn, kind="sdpa")`` runs every registered property of the kind on ``fn`` and returns a
:class:`ValidationResult`. The parts, one job each:

- :mod:`.result`: what a run returns (Status, Measurement, PropertyResult, ValidationResult);
- :mod:`.tolerance`: the rule err(candidate) <= k err(plain, same precision) + floor;
- :mod:`.backends`: putting host arrays in the candidate's library, dtype and device, and back;
- :mod:`.candidate`: the Candidate interface the properties call; :mod:`.adapters`: making one
  from a plain function or a known peer (torch's and jax's SDPA);
- :mod:`.registry`: properties registered by kind; :mod:`.context`: what a property receives;
- :mod:`.search`: hypothesis examples shrunk to the smallest failure;
- :mod:`.runner`: each property isolated under a time limit (raise: ERROR, hang: TIMEOUT);
- :mod:`.sdpa`: the properties of kind "sdpa".
"""

from verify.validate.result import Measurement, PropertyResult, Status, ValidationResult
from verify.validate.tolerance import relative_error, rule
from verify.validate.runner import validate

__all__ = ["Measurement", "PropertyResult", "Status", "ValidationResult", "relative_error", "rule", "validate"]
