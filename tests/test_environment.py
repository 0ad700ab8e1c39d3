"""In CI every optional part but CuPy is installed, so nothing else may skip there.

``.ci/run`` first runs the README's commands as a fresh user would (``CI`` unset, no torch, no
TeX, no Dask: those tests skip with a reason), then installs the optional parts and runs the tests again
with ``CI`` set, where this module fails if one of them is missing.
"""

import importlib.util
import os
import shutil

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("CI"), reason="CI only: a user's machine may lack the optional parts")


@pytest.mark.parametrize("module", ["torch", "array_api_strict", "hypothesis", "jsonschema", "pytest_timeout",
                                    "distributed", "bokeh", "jax"])
def test_ci_installs_the_optional_python_parts(module):
    assert importlib.util.find_spec(module) is not None, f"CI must install {module} (.ci/run)"


def test_ci_installs_a_tex_engine():
    assert shutil.which("pdflatex"), "CI must install a TeX engine (.ci/run installs texlive)"
