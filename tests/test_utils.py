"""kd_env.utils: the crash points' counts can be cleared, and importing the helpers (with the
package root they bring in) changes no process state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from processes import PIN_TORCH, child_environment

from kd_env.utils import CRASH_ENV, crash_point, crash_point_counts, reset_crash_points


def test_crash_point_counts_start_again_after_a_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crash_point_counts() == {}  # conftest's autouse fixture reset them before this test
    monkeypatch.setenv(CRASH_ENV, "never-reached@3,also-counted@5")
    crash_point("never-reached")
    crash_point("never-reached")
    crash_point("also-counted")
    crash_point("not-named")  # counted only when $KD_ENV_CRASH_AT names it
    assert crash_point_counts() == {"never-reached": 2, "also-counted": 1}
    reset_crash_points()
    assert crash_point_counts() == {}
    crash_point("never-reached")
    crash_point("never-reached")  # the 3rd reach would have killed the process without the reset
    assert crash_point_counts() == {"never-reached": 2}


_IMPORT_STATE_SCRIPT = """
import json, logging, os, signal, warnings
import torch
import gymnasium  # sets $PYGAME_HIDE_SUPPORT_PROMPT and a warnings filter of its own on import

def state():
    return repr((
        sorted(os.environ.items()), torch.get_num_threads(), torch.get_default_dtype(),
        [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)],
        list(warnings.filters), logging.getLogger().handlers, logging.getLogger().level,
    ))

before = state()
import kd_env.utils, kd_env.utils.atomic, kd_env.utils.crash_points, kd_env.utils.threads
print(json.dumps(state() == before))
"""


def test_importing_the_helpers_changes_no_process_state() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PIN_TORCH + _IMPORT_STATE_SCRIPT],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) is True
