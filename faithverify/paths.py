"""Output paths, checked before the work that fills them: a path that cannot become a file (a folder in the
way, a parent that is a file, a name too long for the file system, a folder without write permission) is one
:class:`~faithverify.errors.ResultsFileError`, raised before a long run rather than after it. Nothing is created.
"""

from __future__ import annotations

import os
from pathlib import Path

from faithverify.errors import ResultsFileError

# Room a temporary file next to a target needs beyond the target's own name (an atomic write's
# ".NAME.XXXXXXXX.tmp").
_TMP_EXTRA = 16


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, an output path that cannot be written: under a file, a folder itself, or a name
    the file system cannot hold. Nothing is created."""
    _check_path(path, what, folder=False)


def check_writable_dir(path: Path, what: str) -> None:
    """As :func:`check_writable`, for a folder (which may exist)."""
    _check_path(path, what, folder=True)


def exists(path: Path) -> bool:
    """``path.exists()``, False for a name the file system cannot even look up."""
    try:
        return path.exists()
    except OSError:  # a name too long to exist
        return False


def _check_path(path: Path, what: str, *, folder: bool) -> None:
    ancestor, missing = path, []
    while not exists(ancestor) and ancestor != ancestor.parent:
        missing.append(ancestor.name)
        ancestor = ancestor.parent
    if ancestor == path:  # it exists
        if folder and not path.is_dir():
            raise ResultsFileError(f"cannot write {what} {_short(path)}: it is a file, not a folder")
        if not folder and path.is_dir():
            raise ResultsFileError(f"cannot write {what} {_short(path)}: it is a directory")
        ancestor = path if folder else path.parent
    elif not ancestor.is_dir():
        raise ResultsFileError(
            f"cannot write {what} {_short(path)}: {_short(ancestor)} is a file, not a folder"
        )
    # A file is written through a temporary file beside it, whose name is longer.
    _check_names(ancestor, missing[::-1], what, path, extra=0 if folder else _TMP_EXTRA)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ResultsFileError(f"cannot write {what} {_short(path)}: {_short(ancestor)} is not writable")


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 100 else text[:60] + "..." + text[-30:]


def _check_names(existing: Path, names: list[str], what: str, path: Path, extra: int) -> None:
    """Each of ``names`` (to be created under ``existing``, the last being the target) fits the file system."""
    try:
        limit = int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError):
        limit = 255
    for k, name in enumerate(names):
        allowed = limit - (extra if k == len(names) - 1 else 0)
        if len(os.fsencode(name)) > allowed:
            raise ResultsFileError(
                f"cannot write {what} {_short(path)}: the name {name[:30]}... is too long for the file system "
                f"({len(os.fsencode(name))} bytes; at most {allowed})"
            )
