"""The ``attnverify`` command line: the only module that knows numerics, verify and proofs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

try:
    __version__ = version("attnverify")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnverify")
def main() -> None:
    """attnverify: check the mathematics of Transformer attention.

    Exact SymPy derivations, Monte Carlo evidence with honest confidence
    intervals, and a reference multi-head attention on NumPy, CuPy or any
    array-API library.
    """


from verify.cli_check import check, derive, report  # noqa: E402  (commands register below)

main.add_command(check)
main.add_command(derive)
main.add_command(report)

from .cli_mc import mc  # noqa: E402

main.add_command(mc)

if __name__ == "__main__":
    main()
