"""The exit codes every command uses, and the one a command plans before it prints."""

import click

#: The exit codes, as each command's --help shows them.
EXIT_CODES = """\b
Exit codes:
  0    done (a REFUTED claim is a finding, not a failure)
  1    findings under --strict, or a check crashed; derive, prove: a step that did not pass;
       crosscheck: a line over its bound; validate: a property that failed, raised or timed out
  2    bad usage: unknown option, bad value, an output path that cannot be written
  130  interrupted (Ctrl-C); what finished is saved, marked incomplete"""

#: validate's own exit codes (its 0 is not "done": a FAIL exits 1).
VALIDATE_EXIT_CODES = """\b
Exit codes:
  0    every applicable property passed
  1    a property failed, raised (ERROR) or timed out
  2    bad usage: unknown option, bad value, a MODULE:ATTR that cannot be imported (a syntax error
       or an exception in the file) or called as asked, a backend that is not installed, an output
       path that cannot be written
  130  interrupted (Ctrl-C); what finished is saved, marked incomplete and not passed"""

#: Key (in click's shared ctx.meta) of the exit code a command plans before it prints.
PLANNED_EXIT = "attnverify.exit_code"


def plan_exit(code: int) -> None:
    """Record the code the running command will exit with, before it prints its tables: if
    stdout's reader goes away mid-print, the command still ends with this code."""
    click.get_current_context().meta[PLANNED_EXIT] = code
