"""``python -m kd_env.cli``: the ``kd-env`` command."""

import sys

from kd_env.cli import main

sys.exit(main())
