"""The benchmark: presets, sweeps, statistics and reports."""
