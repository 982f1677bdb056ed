"""Crash points for the reliability tests: a process kills itself at a named instruction.

Outside those tests ``$KD_ENV_CRASH_AT`` is unset and :func:`crash_point` costs one lookup. The
only state is the count of each point reached; :func:`reset_crash_points` clears it (the tests'
autouse fixture does, so no test's counts carry into the next one's).
"""

from __future__ import annotations

import collections
import os
import signal

#: Environment variable naming the crash points at which this process kills itself (tests only).
CRASH_ENV = "KD_ENV_CRASH_AT"
_crash_counts: collections.Counter[str] = collections.Counter()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL here if ``$KD_ENV_CRASH_AT`` names this point.

    ``KD_ENV_CRASH_AT="checkpoint:env@2,step@7"`` kills the process the 2nd time it reaches
    ``checkpoint:env`` or the 7th time it reaches ``step`` (``@1`` when no count is given). The
    reliability tests use it to stop a run at a chosen instruction, as ``kill -9`` would, but
    deterministically; unset (always, outside those tests) it costs one dict lookup.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, count = item.strip().partition("@")
        if point == name:
            _crash_counts[name] += 1
            if _crash_counts[name] == int(count or 1):
                os.kill(os.getpid(), signal.SIGKILL)


def crash_point_counts() -> dict[str, int]:
    """How many times this process has reached each crash point named in ``$KD_ENV_CRASH_AT`` (a copy)."""
    return dict(_crash_counts)


def reset_crash_points() -> None:
    """Forget how many times each crash point was reached: ``@N`` counts from here again."""
    _crash_counts.clear()
