import pytest

from tests.helpers import BACKENDS, load_backend


@pytest.fixture(params=BACKENDS)
def xp(request):
    """Each array-API namespace in turn: numpy, array_api_strict, torch, cupy (GPU only)."""
    return load_backend(request.param)
