"""The properties of kind "sdpa" (scaled dot-product attention), registered on import, in the
order the battery runs them."""

from verify.validate.sdpa import agreement, exact, scale, structure, masking, gradients  # noqa: F401
