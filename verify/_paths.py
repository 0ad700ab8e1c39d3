"""Output paths, checked when the command line is read, before any work.

One rule for every command (``check --json``, ``mc --json/--plot``, ``report --out``): ``..`` is
resolved first (as the system would: through symbolic links, and lexically past a folder that does
not exist yet), then a missing parent folder is created; a path that cannot be written is a usage
error (exit 2) naming the option, what was expected and what came. An existing file is opened for
appending and written zero bytes, which changes nothing in a file and fails where a write would
(``/proc/self/status``; ``/dev/full`` on Linux). Two outputs of one command may not name the same
file. A write that still fails after these checks (a disk that fills during the run) is exit 1.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

import click

__all__ = ["OutputPath", "check_output_path", "refuse_shared_outputs", "write_output", "PLOT_SUFFIXES"]

#: Plot formats matplotlib writes with no extra dependency (see verify.montecarlo.plots).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_output_path(path: Path, *, directory: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """Make sure ``path`` (a file, or a folder when ``directory``) can be written; create its
    missing parent folders (or the folder itself). Raise ValueError saying why not."""
    path = _resolve_dots(Path(path).expanduser(), directory)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"expected a file name ending in {', '.join(suffixes)}; got {str(path)!r}")
    if not directory and path.exists():
        if path.is_dir():
            raise ValueError(f"expected a file; {str(path)!r} is a directory")
        if not os.access(path, os.W_OK):
            raise ValueError(f"{str(path)!r} exists and is not writable")
        _probe_existing(path)
        return path  # an existing file, or a device such as /dev/null: overwritten when the work is done
    folder = path if directory else path.parent
    _make_folder(folder)
    _probe(folder)
    return path


def _resolve_dots(path: Path, directory: bool) -> Path:
    """``path`` with its ``..`` resolved before any folder is created: ``/nope/../x.json`` is
    ``/x.json`` (and ``/nope`` is not made). The folders are resolved as the system resolves them
    (os.path.realpath: through symbolic links, lexically past a part that does not exist); a file's
    own name is kept, so ``/dev/stdout`` stays ``/dev/stdout``. A path with no ``..`` is returned
    as given, so messages show it as the user wrote it."""
    if ".." not in path.parts:
        return path
    if directory or path.name == "..":
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def _probe_existing(path: Path) -> None:
    """Open an existing file for appending and write zero bytes: nothing changes in a file, a
    device or a pipe, but a pseudo-file that takes no writes (``/proc/self/status``: EINVAL, EIO)
    or a full device (``/dev/full``: ENOSPC) fails here, before the work. A named pipe is
    left alone (opening it would wait for a reader); a block device is refused (a result file
    written over a disk is never meant)."""
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return
    if stat.S_ISBLK(mode):
        raise ValueError(f"expected a file; {str(path)!r} is a block device")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be opened for writing: {exc.strerror or exc}") from None
    try:
        os.write(fd, b"")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be written: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def refuse_shared_outputs(**outputs) -> None:
    """Usage error (exit 2) when two output options name the same file: ``outputs`` maps each
    option's name (``"--json"``) to its checked path, or None / ``"-"`` when not given. Paths are
    compared resolved (symbolic links, ``..``), and by inode when both exist (hard links)."""
    given = [(option, Path(path)) for option, path in outputs.items() if path is not None and str(path) != "-"]
    for i, (first, a) in enumerate(given):
        for second, b in given[i + 1:]:
            same = os.path.realpath(a) == os.path.realpath(b)
            if not same and a.exists() and b.exists():
                try:
                    same = os.path.samefile(a, b)
                except OSError:
                    pass
            if same:
                raise click.UsageError(f"'{first}' and '{second}' name the same file {str(b)!r}: "
                                       "give each output its own path")


def _make_folder(folder: Path) -> None:
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "" if parent == folder else f", so the directory {str(folder)!r} cannot be created"
                raise ValueError(f"{str(parent)!r} is a file, not a directory{what}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the directory {str(folder)!r}: {exc.strerror or exc}") from None


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only test that holds for root and read-only mounts."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".attnverify-probe-")
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ValueError(f"the directory {str(folder)!r} is not writable: {why}") from None
        # another cause (a virtual file system such as /proc answers ENOENT): say what happened
        raise ValueError(f"cannot create a file in the directory {str(folder)!r}: {why}") from None
    os.close(fd)
    os.unlink(name)


def write_output(path: Path, option: str, write: Callable[[], object]) -> None:
    """Run ``write()``; an OSError after the up-front check (a disk that filled meanwhile) is one
    line naming ``option``, exit 1."""
    try:
        write()
    except OSError as exc:
        raise click.FileError(str(path), hint=f"{option}: {exc.strerror or exc}") from None


class OutputPath(click.ParamType):
    """A file (or folder) the command will write, checked as it is parsed; ``-`` means stdout
    when ``dash`` is allowed."""

    name = "PATH"

    def __init__(self, *, directory: bool = False, suffixes: tuple[str, ...] = (), dash: bool = False):
        self.directory, self.suffixes, self.dash = directory, suffixes, dash

    def convert(self, value, param, ctx):
        if self.dash and str(value) == "-":
            return "-"
        try:
            return check_output_path(Path(value), directory=self.directory, suffixes=self.suffixes)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="dir" if self.directory else "file")]
