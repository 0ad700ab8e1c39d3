"""The ``attnverify`` command line: the only package that knows numerics, verify and proofs.

One module a command (check.py holds check, derive and report); this module holds the group.
"""

from __future__ import annotations

import os
import signal
import sys

# Ctrl-C while the console script loads: exit 130, no traceback (main() restores Python's
# handler). Only for the script itself: a program that imports this module keeps its own.
if os.path.basename(sys.argv[0] if sys.argv else "").startswith("attnverify") \
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    def _exit_130(signum, frame):
        sys.exit(130)

    signal.signal(signal.SIGINT, _exit_130)

import threading  # noqa: E402

import click  # noqa: E402

from verify import __version__  # noqa: E402
from verify._exits import EXIT_CODES, PLANNED_EXIT  # noqa: E402

class AttnverifyGroup(click.Group):
    """The top-level group: one policy for interrupts, closed pipes and memory errors."""

    def main(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() \
                and getattr(signal.getsignal(signal.SIGINT), "__name__", "") == "_exit_130":
            signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C raises again
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # CPython's recipe: stdout's reader has gone; files were written before the tables.
            _silence_stdout()
            ctx.exit(ctx.meta.get(PLANNED_EXIT, 1))
        except MemoryError:
            raise click.ClickException("out of memory; try fewer --samples or smaller --dk") from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (click's test runner)
        pass


#: How to turn on shell completion (click's own), as --help shows it.
COMPLETION = """\b
Shell completion (add to ~/.bashrc, ~/.zshrc or fish's config):
  bash: eval "$(_ATTNVERIFY_COMPLETE=bash_source attnverify)"
  zsh:  eval "$(_ATTNVERIFY_COMPLETE=zsh_source attnverify)"
  fish: _ATTNVERIFY_COMPLETE=fish_source attnverify | source"""


@click.group(cls=AttnverifyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES + "\n\n" + COMPLETION)
@click.version_option(__version__, prog_name="attnverify")
def main() -> None:
    """attnverify: check the mathematics of Transformer attention.

    Exact SymPy derivations, Monte Carlo evidence with honest confidence
    intervals, and a reference multi-head attention on NumPy, CuPy or any
    array-API library.
    """


# One module a command; imported as modules so that the package attributes stay the modules.
from verify.cli import audit as _audit, check as _check, mc as _mc, prove as _prove, validate as _validate  # noqa: E402

for _command in (_check.check, _check.derive, _check.report, _mc.mc, _audit.audit, _prove.prove, _validate.validate):
    main.add_command(_command)
