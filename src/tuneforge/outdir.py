"""Output folders and full disks, the same for every stage.

`check_out` runs before any data or model loads, so a wrong --out costs nothing: the
folder must not be (or sit under) a file, and a file must be writable where it will be
made. `writing` turns a full disk into a `disk_full` error that names the file, since a
failed write() carries no file name of its own; the CLI says the same for a full disk
that surfaces anywhere else.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import Problem, TuneforgeError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path | str) -> Problem:
    return Problem("disk_full", f"no space left on device (writing {path}); free space and run again")


def check_out(out: Path) -> list[Problem]:
    """Problems with `out` as an output folder, found by one probe write and no other change."""
    where = str(out)
    if out.exists() and not out.is_dir():
        return [Problem("out_not_a_folder", "--out is an existing file; choose another --out (a new or existing folder)", where)]
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [Problem("out_not_a_folder", f"--out lies under {parent}, which is a file, not a folder; choose another --out", where)]
    try:
        # a real write, not os.access: access() ignores read-only mounts and says yes to root
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        if exc.errno in DISK_FULL:
            return [disk_full(parent)]
        return [Problem("out_not_writable", f"cannot write here ({exc.strerror or exc}); choose a folder you can "
                        "write to with --out, or fix its permissions", where)]
    return []


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """A full disk while writing `path` becomes `disk_full` naming it; other OSErrors get its name."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise TuneforgeError(disk_full(exc.filename or path)) from None
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
