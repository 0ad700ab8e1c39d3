"""verify: Monte Carlo experiments, cross-backend checks, the validate battery and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnverify")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
