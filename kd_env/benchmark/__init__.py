"""The benchmark: presets, sweeps, statistics and reports (``kd-env bench``).

* :mod:`~kd_env.benchmark.presets`: :class:`Method`, :class:`Preset` and :data:`PRESETS`
  (``quick``, ``suite``, ``fmnist``, ``cifar100-paper``, ...);
* :mod:`~kd_env.benchmark.sweep`: :func:`run_benchmark`, the runs as child processes;
* :mod:`~kd_env.benchmark.stats`: rliable's metrics with ``scipy.stats``;
* :mod:`~kd_env.benchmark.report`: tables and plots rebuilt from the run folders.

(``benchmarks/`` at the repository root holds the speed and memory scripts, not this.)
"""

from kd_env.benchmark.presets import PRESETS, Method, Preset
from kd_env.benchmark.sweep import run_benchmark

__all__ = ["PRESETS", "Method", "Preset", "run_benchmark"]
