"""Errors a user can act on. The CLIs print them as one line (no traceback) and exit non-zero."""

from __future__ import annotations


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
