"""kd-env's version, in a module of its own: setup.cfg reads it without importing the package,
and modules below ``kd_env/__init__.py`` (teacher checkpoints, a sweep's provenance) record it."""

__version__ = "0.1.0"
