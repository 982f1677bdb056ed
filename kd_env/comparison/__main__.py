"""``python -m kd_env.comparison --run-one RUN_DIR [--threads N]``: one run of a sweep, in the
child process the sweep starts (use ``kd-env bench`` to run a sweep)."""

import sys

from kd_env.comparison.sweep import main

main(sys.argv[1:])
