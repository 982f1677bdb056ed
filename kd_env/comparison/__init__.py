"""The benchmark: presets, sweeps, statistics and reports (``kd-env bench``).

* :mod:`~kd_env.comparison.presets`: :class:`Method`, :class:`Preset` and :data:`PRESETS`
  (``quick``, ``suite``, ``fmnist``, ``cifar100-paper``, ...);
* :mod:`~kd_env.comparison.sweep`: :func:`run_benchmark`, the runs as child processes;
* :mod:`~kd_env.comparison.stats`: rliable's metrics with ``scipy.stats``;
* :mod:`~kd_env.comparison.report`: tables and plots rebuilt from the run folders.

(``benchmarks/`` at the repository root holds the speed and memory scripts, not this.)
"""

from kd_env.comparison.presets import Method, Preset
from kd_env.comparison.shipped import PRESETS
from kd_env.comparison.sweep import run_benchmark

__all__ = ["PRESETS", "Method", "Preset", "run_benchmark"]
