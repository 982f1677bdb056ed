"""The environment of every child process a test starts (imported by the tests as ``processes``).

A test that compares a run made in a child with one made in the pytest process (which conftest
keeps on one torch thread) must run both at the same thread count, whatever the user exported:
another count sums in another order and changes the last bits. One helper, so no test forgets
a variable.
"""

from __future__ import annotations

import os

from kd_env.utils import thread_environment

#: torch threads of the pytest process (tests/conftest.py) and of every child a test starts
TEST_THREADS = 1

#: a line to put first in a ``python -c`` script: torch sized explicitly as well, not only
#: through the variables it reads at start-up
PIN_TORCH = f"import torch; torch.set_num_threads({TEST_THREADS})\n"


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, with OpenMP's and MKL's thread counts pinned
    to :data:`TEST_THREADS`. A copy: ``os.environ`` is not changed."""
    return thread_environment(TEST_THREADS, {**os.environ, **extra})
