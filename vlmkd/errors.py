"""Errors a user can act on. The CLIs print them as one line (no traceback) and exit non-zero."""

from __future__ import annotations

import os
import re
from pathlib import Path

_WRAPPED_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class VlmkdError(Exception):
    """Base class of every error vlmkd reports to a user as a one-line message."""


class InputError(VlmkdError, ValueError):
    """Bad input data or arguments: the message names the file (line, index) and the problem."""


class StoreMismatchError(VlmkdError):
    """A store was made from another dataset, prompt set, model or encoder than the one in use."""


class MissingDependencyError(VlmkdError, ImportError):
    """An optional dependency (DALI, TensorRT-LLM, torchvision...) is needed but not installed."""


class ServiceError(VlmkdError):
    """Remote servers (the `openai` captioning engine's) cannot be used: none is left, or they refuse everything."""


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error (disk full, read-only folder, no permission...), naming the file."""
    import errno

    where = f"{error.filename}: " if error.filename is not None else ""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = "the disk (or quota) is full: free some space and rerun; finished work is kept"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "cannot write there: choose a writable output folder (or fix its permissions)"
    else:
        advice = ""
    return f"{where}{reason}" + (f" ({advice})" if advice else "")


def os_error_in(error: BaseException, filename: str | Path) -> OSError | None:
    """The operating-system error that a library reports only in its message, as an `OSError` about `filename`
    (safetensors' Rust writer: "I/O error: No space left on device (os error 28)"); None if there is none."""
    if isinstance(error, OSError):
        return OSError(error.errno, error.strerror, str(filename)) if error.errno else error
    found = _WRAPPED_OS_ERROR.search(str(error))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(filename))
