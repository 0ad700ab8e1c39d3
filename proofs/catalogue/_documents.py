"""Where the catalogue's documents are: the bundled seeds folder, plus any folder you name.

A *catalogue folder* holds documents (``*.txt`` or ``*.md``) named ``KEY_anything.ext``; the key
is the part before the first ``_`` (``003_ea119736e090508e.txt`` has key ``"003"``; a name with
no ``_`` is its own key). The checks of document ``KEY`` live in a module ``seed_KEY.py``: for
the bundled folder (``proofs/catalogue/seeds/``) it is ``proofs.catalogue.seed_KEY``; for any
other folder it is the file ``seed_KEY.py`` beside the document, loaded by path.

Other folders come from the ``ATTNVERIFY_CATALOGUE`` environment variable (folders separated by
``os.pathsep``) or the ``folders=`` argument of :func:`proofs.catalogue.all_claims` and its
siblings. Two documents with the same key are an error that names both files.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

SEEDS_DIR = Path(__file__).with_name("seeds")
ENV_FOLDERS = "ATTNVERIFY_CATALOGUE"
SUFFIXES = (".txt", ".md")
_KEY = re.compile(r"^([^_]+)_")

#: Every document found so far in this process (key -> Document; the latest folder read wins), so
#: a check can name its document by key (``bmatrices("005", 12)``) once its folder has been read.
_SEEN: dict[str, "Document"] = {}


@dataclass(frozen=True)
class Document:
    """One document of the catalogue: its key, its file and where its checks live."""

    key: str
    path: Path
    bundled: bool

    @property
    def module_path(self) -> Path | None:
        """The file ``seed_KEY.py`` beside a document outside the bundled folder (None for bundled)."""
        return None if self.bundled else self.path.with_name(f"seed_{self.key}.py")

    @property
    def module_name(self) -> str:
        """The name its checks module is imported under (a path digest keeps two folders apart)."""
        if self.bundled:
            return f"proofs.catalogue.seed_{self.key}"
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        return f"_attnverify_catalogue_{digest}.seed_{self.key}"


def document_key(path: str | Path) -> str:
    """``"003"`` for ``003_ea119736e090508e.txt``; the stem for a name without ``_``."""
    name = Path(path).name
    m = _KEY.match(name)
    return m.group(1) if m else Path(name).stem


def catalogue_folders(folders: Iterable[str | Path] | None = None) -> list[Path]:
    """The bundled seeds folder, then the folders of ``$ATTNVERIFY_CATALOGUE``, then ``folders``.

    Raises
    ------
    NotADirectoryError
        When a named folder does not exist (the environment variable's or the argument's).
    """
    env = [p for p in os.environ.get(ENV_FOLDERS, "").split(os.pathsep) if p.strip()]
    out = [SEEDS_DIR]
    for origin, items in ((f"${ENV_FOLDERS}", env), ("folders", list(folders or []))):
        for item in items:
            path = Path(item).expanduser().resolve()
            if not path.is_dir():
                raise NotADirectoryError(f"catalogue folder from {origin} must be a directory: {str(item)!r} is not")
            if path not in out:
                out.append(path)
    return out


def documents(folders: Iterable[str | Path] | None = None) -> dict[str, Document]:
    """Every document of the catalogue, key -> :class:`Document`, bundled first, each folder sorted.

    Raises
    ------
    ValueError
        When two files share a key (the message names both).
    """
    found: dict[str, Document] = {}
    for folder in catalogue_folders(folders):
        for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()):
            doc = Document(document_key(path), path, bundled=folder == SEEDS_DIR)
            if doc.key in found and found[doc.key].path != path:
                raise ValueError(f"two catalogue documents have the key {doc.key!r}: {found[doc.key].path} and {path}")
            found[doc.key] = doc
    _SEEN.update(found)  # a later folder with the same key replaces an earlier one (tests use temporary folders)
    return found


def _seen(name: str) -> Document | None:
    return _SEEN.get(name) or next((d for d in _SEEN.values() if d.path.name == name), None)


def known_document(name: str) -> Document | None:
    """The document with this key or file name among those found so far (the bundled ones
    and ``$ATTNVERIFY_CATALOGUE``'s always), or None."""
    if _seen(name) is None:
        try:
            documents()
        except (OSError, ValueError):
            pass
    return _seen(name)


#: The bundled seeds, key -> file name (derived from the folder, never kept by hand).
DOCUMENTS: dict[str, str] = {
    document_key(p): p.name for p in sorted(SEEDS_DIR.iterdir()) if p.suffix in SUFFIXES and p.is_file()
}
