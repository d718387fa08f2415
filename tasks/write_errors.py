"""What a failed write means, read from the error itself (its errno), so a message never guesses "disk full?"."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# Failed writes a user can act on, by errno: what happened, and what to do.
_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "Free some space and re-run."),
    errno.EDQUOT: ("the disk quota is exceeded", "Free some space or raise the quota and re-run."),
    errno.EFBIG: ("the file-size limit (`ulimit -f`) was reached", "Raise the limit and re-run."),
    errno.EACCES: ("no permission to write there", "Make the folder writable (or set paths.models_dir) and re-run."),
    errno.EROFS: ("the file system is read-only", "Set paths.models_dir to a writable folder and re-run."),
}


def write_errno(err: BaseException) -> int | None:
    """The errno behind a failed write: an OSError's anywhere in the exception chain, or the one a library names in
    its message (Rust's `Os { code: 27, ... }` or `(os error 27)`, as safetensors wraps it)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    if match := re.search(r"\bOs \{ code: (\d+)|\(os error (\d+)\)", str(err)):
        return int(match.group(1) or match.group(2))
    return next((code for code in _WRITE_ERRORS if os.strerror(code) in str(err)), None)


def write_error_cause(err: BaseException, target: Path) -> tuple[str, str]:
    """(what happened, what to do) for a failed write to target, from the error itself: never a guess."""
    code = write_errno(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        where = next((d for d in (target, *target.parents) if d.exists()), Path("."))
        what, todo = _WRITE_ERRORS[code]
        return f"{what}: {shutil.disk_usage(where).free / 2**20:.0f} MiB free there", todo
    if code == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        shown = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit} bytes"
        what, todo = _WRITE_ERRORS[code]
        return f"{what}: {shown}", todo
    if code in _WRITE_ERRORS:
        return _WRITE_ERRORS[code]
    if code is not None:
        return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}", "Fix the cause and re-run."
    return f"{type(err).__name__}", "Fix the cause and re-run."
