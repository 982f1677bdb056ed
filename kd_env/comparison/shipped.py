"""The presets kd-env ships, by name: the files of ``kd_env/comparison/preset_specs``, each read
(through :mod:`kd_env.comparison.spec`) on first use, so that ``kd-env``'s start-up reads only
the files it needs. :mod:`~kd_env.comparison.presets` holds the dataclasses they are made of."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from kd_env.comparison.presets import Preset
from kd_env.comparison.spec import load_preset, preset_names

__all__ = ["PAPER_PROTOCOLS", "PRESETS", "paper_preset"]

PAPER_PROTOCOLS = {"default": "cifar100-paper", "official": "cifar100-paper-official"}


def paper_preset(protocol: str = "default") -> Preset:
    """MTKD-RL's CIFAR-100 comparison (4-teacher pool, 4 students, 240 epochs): a GPU job.

    ``protocol="default"`` (``cifar100-paper.yaml``): kd-env's protocol (validation split,
    best-validation student) and MTKD-RL with ``--dynamic`` chosen per student as the official
    README does, plus kd-env's REINFORCE and PPO. ``protocol="official"``
    (``cifar100-paper-official.yaml``): the official scripts' protocol (all 50,000 training
    images, best test accuracy over epochs) and MTKD-RL both with and without ``--dynamic``, so
    that each published number has a run to put next to it; REINFORCE and PPO are left out
    (their default reward needs the validation split). A fresh copy on every call.
    """
    if protocol not in PAPER_PROTOCOLS:
        raise ValueError(f"protocol must be 'default' or 'official', got {protocol!r}")
    return load_preset(PAPER_PROTOCOLS[protocol])


class _PresetFiles(Mapping[str, Preset]):
    """The built-in presets by name, each read from its file on first use (so that ``kd-env``'s
    start-up reads only the files it needs)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Preset] = {}

    def _names(self) -> list[str]:
        return preset_names()

    def __getitem__(self, name: str) -> Preset:
        if name not in self._loaded:
            if name not in self._names():
                raise KeyError(name)
            self._loaded[name] = load_preset(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


PRESETS: Mapping[str, Preset] = _PresetFiles()
"""The built-in presets (``quick``, ``suite``, ``suite-ablations``, ``suite-synthetic``,
``fmnist``, ``cifar100-paper``, ``cifar100-paper-official``): the files of
``kd_env/comparison/preset_specs``."""
