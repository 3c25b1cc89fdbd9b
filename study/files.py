"""Files the project writes: atomic writes, and the rule that nothing existing is overwritten.

Every file a user keeps (a dataset, a run's ``metrics.json``, a study's frame) is written under a
temporary name in its own directory and renamed into place, so a reader never sees half a file
and an interrupted write leaves the old file (or nothing) behind. The temporary name carries the
process id, so processes writing the same target at once (the K seeds of a configuration
writing its record) never share one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.errors import UserError


def temporary_path(path: Path, keep_suffix: bool = False) -> Path:
    """A hidden name beside ``path``, unique to this process: ``.NAME.PID.tmp``.

    ``keep_suffix`` appends ``path``'s suffix again (``.NAME.PID.tmp.hdf5``), for writers that
    pick the format from the file name (qp's ``Ensemble.write_to``).
    """
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix if keep_suffix else ''}")


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], Any], *, keep_suffix: bool = False
) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it into place.

    On an exception the temporary file is removed and ``path`` is untouched. ``keep_suffix``:
    the temporary name ends in ``path``'s suffix too (``temporary_path``).
    """
    path = Path(path)
    tmp = temporary_path(path, keep_suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text))


def refuse_existing(
    out: str | os.PathLike, *, overwrite: bool = False, source: str | os.PathLike | None = None
) -> Path:
    """Refuse an output file that exists (unless ``overwrite``) or that is the input itself.

    Raises:
        UserError: one line naming the file and the fix, before any work starts.
    """
    out = Path(out)
    if out.exists() and source is not None and out.resolve() == Path(source).resolve():
        raise UserError(f"{out}: --out is the input file; write the result to another path")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: output exists; choose another --out or pass --force")
    return out


def refuse_nonempty_dir(out: str | os.PathLike, fix: str) -> Path:
    """Refuse an output directory that exists and is not empty; ``fix`` ends the message."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: --out exists and is not empty; {fix}")
    return out
