"""The rich console the commands print their tables to."""

import sys

from rich.console import Console

#: Width of tables written to a pipe or file, instead of rich's 80-column default.
PIPE_WIDTH = 160


def stdout_console() -> Console:
    """A console on stdout: the terminal's width, or PIPE_WIDTH when piped."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)
