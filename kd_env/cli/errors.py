"""How the CLI reports an error: one message, with the fix where the library knows it."""

from __future__ import annotations

import errno

#: Errors the library raises on purpose, with messages written for the user: printed as they are.
_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, RuntimeError, OSError)

_OS_ERROR_ADVICE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def describe_error(exc: BaseException) -> str:
    """One message for an error the CLI reports without a traceback (what went wrong and, where
    the library knows it, the fix)."""
    if isinstance(exc, OSError) and exc.errno in _OS_ERROR_ADVICE and not type(exc).__module__.startswith("kd_env"):
        where = exc.filename or "a file"
        what = _OS_ERROR_ADVICE[exc.errno]
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space and rerun (with --resume for kd-env train: the last complete checkpoint was kept)"
        else:
            fix = (
                "fix the permissions, or use a writable place: --cache-dir or $KD_ENV_CACHE for the cache, "
                "--data-root or $KD_ENV_DATA for data, --run-dir / --out for results"
            )
        return f"{what}: {where}. Fix: {fix}"
    message = str(exc) or type(exc).__name__
    # gymnasium re-raises an env constructor's error with the call appended: keep the error itself
    message = message.split(" was raised from the environment creator for ")[0]
    if isinstance(exc, _EXPECTED_ERRORS):
        return message
    return f"{type(exc).__name__}: {message} (unexpected: rerun with --debug for the traceback, and please report it)"
