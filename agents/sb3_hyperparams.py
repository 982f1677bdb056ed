"""Hyperparameters of the stable-baselines3 agents, read the RL Baselines3 Zoo way, without ``eval``.

:func:`load_hyperparams` reads ``hyperparams/<algo>.yml`` (package data of ``kd_env.agents``,
RL Zoo's layout: one section per env id plus ``default``; the per-sample env has its own
sections ``<env id>/per-sample`` and ``default/per-sample``) and turns the strings RL Zoo
evaluates with ``eval`` (``policy_kwargs``, ``normalize``, ``lin_<x>`` schedules) into Python
objects: only literals, ``dict(...)`` and an allow-list of ``nn`` / optimiser classes are
accepted (:func:`parse_python_literal`). :mod:`kd_env.agents.sb3` builds the agents from them.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.resources
from collections.abc import Mapping
from typing import Any

import yaml
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.utils import LinearSchedule
from torch import nn, optim

__all__ = [
    "ALGORITHMS",
    "ALLOWED_NAMES",
    "ENV_SIDE_KEYS",
    "PER_SAMPLE_SUFFIX",
    "SCHEDULE_KEYS",
    "check_algo",
    "load_hyperparams",
    "parse_python_literal",
    "preprocess_hyperparams",
    "raw_hyperparams",
    "section_name",
]

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ddpg": DDPG}

#: Suffix of the yaml section of the per-sample env (``"<env id>/per-sample"``).
PER_SAMPLE_SUFFIX = "/per-sample"

#: Hyperparameters that may be ``lin_<x>`` schedules (RL Zoo's list, minus ARS's ``delta_std``).
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")

#: Keys handled here rather than passed to the SB3 constructor (RL Zoo pops the same ones).
ENV_SIDE_KEYS = ("n_timesteps", "n_envs", "normalize", "noise_type", "noise_std", "env_kwargs", "monitor_kwargs")

_ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Mish", "SELU", "Sigmoid", "Softplus", "Identity")
_OPTIMIZERS = ("Adam", "AdamW", "RMSprop", "SGD")


def _allowed_names() -> dict[str, Any]:
    """The dotted names a yaml string may mention: activations and optimisers, nothing callable else."""
    names: dict[str, Any] = {"RMSpropTFLike": RMSpropTFLike}
    for prefix in ("nn", "th.nn", "torch.nn"):
        names.update({f"{prefix}.{name}": getattr(nn, name) for name in _ACTIVATIONS})
    for prefix in ("optim", "th.optim", "torch.optim"):
        names.update({f"{prefix}.{name}": getattr(optim, name) for name in _OPTIMIZERS})
    return names


ALLOWED_NAMES: dict[str, Any] = _allowed_names()


# ---------------------------------------------------------------------------------- parsing
def parse_python_literal(text: str) -> Any:
    """Evaluate an RL Zoo hyperparameter string such as
    ``"dict(net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.Tanh)"`` without ``eval``.

    Accepted: numbers, strings, booleans, ``None``, lists, tuples, ``{...}`` dicts with string
    keys, ``dict(key=value, ...)`` and the names in :data:`ALLOWED_NAMES`. Anything else (calls,
    other names, operators) raises ``ValueError``, so a yaml file cannot run code.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse hyperparameter string {text!r}: {exc}") from exc
    return _literal(tree.body, text)


def _literal(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, text)
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise ValueError(f"unary sign on a non-number in {text!r}")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.List):
        return [_literal(element, text) for element in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(element, text) for element in node.elts)
    if isinstance(node, ast.Dict):
        result = {}
        for key_node, value_node in zip(node.keys, node.values):
            key = None if key_node is None else _literal(key_node, text)
            if not isinstance(key, str):
                raise ValueError(f"dict keys must be strings in {text!r}")
            result[key] = _literal(value_node, text)
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(keyword.arg is None for keyword in node.keywords):
            raise ValueError(f"only dict(key=value, ...) is allowed, in {text!r}")
        return {keyword.arg: _literal(keyword.value, text) for keyword in node.keywords}
    if isinstance(node, (ast.Name, ast.Attribute)):
        dotted = ast.unparse(node)
        if dotted in ALLOWED_NAMES:
            return ALLOWED_NAMES[dotted]
        raise ValueError(f"name {dotted!r} is not allowed in {text!r}; allowed: nn.<activation>, th.optim.<optimizer>, RMSpropTFLike")
    raise ValueError(f"unsupported expression {ast.unparse(node)!r} in {text!r} (only literals, dict(...) and nn/optim names)")


def _schedule(key: str, value: Any) -> Any:
    """RL Zoo's schedule strings: ``"lin_3e-4"`` decays linearly from 3e-4 to 0 over training."""
    if not isinstance(value, str):
        return value
    if value.startswith("lin_"):
        try:
            start = float(value[len("lin_") :])
        except ValueError as exc:
            raise ValueError(f"{key}: cannot read the start value of schedule {value!r}") from exc
        return LinearSchedule(start=start, end=0.0, end_fraction=1.0)
    try:  # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the number it means
        return float(value)
    except ValueError as exc:
        raise ValueError(f"{key}: expected a number or 'lin_<start>', got {value!r}") from exc


def preprocess_hyperparams(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a raw yaml section into Python objects (RL Zoo's ``_preprocess_*`` steps, no ``eval``).

    ``policy_kwargs`` (and ``replay_buffer_kwargs``, ``monitor_kwargs``, ``env_kwargs``) strings
    become dicts, ``lin_<x>`` strings become schedules, ``train_freq`` lists become tuples,
    ``n_timesteps``/``n_envs`` become ints and ``normalize`` becomes either ``False`` or the
    keyword arguments of ``VecNormalize`` (``True`` = observations and rewards; the algorithm's
    ``gamma`` is used for the reward's discounted return, as RL Zoo does).
    """
    hyperparams = dict(raw)
    for key in ("policy_kwargs", "replay_buffer_kwargs", "monitor_kwargs", "env_kwargs"):
        if isinstance(hyperparams.get(key), str):
            hyperparams[key] = parse_python_literal(hyperparams[key])
        if key in hyperparams and not isinstance(hyperparams[key], dict):
            raise ValueError(f"{key} must be a dict (or a dict(...) string), got {hyperparams[key]!r}")
    for key in SCHEDULE_KEYS:
        if key in hyperparams:
            hyperparams[key] = _schedule(key, hyperparams[key])
    if isinstance(hyperparams.get("train_freq"), list):
        hyperparams["train_freq"] = tuple(hyperparams["train_freq"])
    for key in ("n_timesteps", "n_envs"):
        if key in hyperparams:
            hyperparams[key] = int(float(hyperparams[key]))
    if hyperparams.get("n_envs", 1) < 1:
        raise ValueError(f"n_envs must be >= 1, got {hyperparams['n_envs']}")
    if "normalize" in hyperparams:
        normalize = hyperparams["normalize"]
        if isinstance(normalize, str):
            normalize = parse_python_literal(normalize)
        if normalize is True:
            normalize = {"norm_obs": True, "norm_reward": True}
        elif normalize is False or normalize is None:
            normalize = False
        elif isinstance(normalize, dict):
            normalize = dict(normalize)
        else:
            raise ValueError(f"normalize must be a bool or a dict of VecNormalize arguments, got {normalize!r}")
        if normalize is not False and "gamma" in hyperparams:
            normalize.setdefault("gamma", hyperparams["gamma"])
        hyperparams["normalize"] = normalize
    return hyperparams


# ---------------------------------------------------------------------------------- yaml files
@functools.cache
def _read_yaml(algo: str) -> dict[str, Any]:
    resource = importlib.resources.files("kd_env.agents").joinpath("hyperparams", f"{algo}.yml")
    if not resource.is_file():
        raise FileNotFoundError(f"no hyperparameter file hyperparams/{algo}.yml in kd_env.agents")
    content = yaml.safe_load(resource.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ValueError(f"hyperparams/{algo}.yml must hold a mapping of sections")
    return content


def check_algo(algo: str) -> str:
    name = algo.lower()
    if name not in ALGORITHMS:
        raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}, got {algo!r}")
    return name


def section_name(algo: str, env_id: str | None, per_sample: bool = False) -> str:
    """The yaml section used for ``env_id`` (RL Zoo: the env's own section, else ``default``)."""
    sections = _read_yaml(check_algo(algo))
    suffix = PER_SAMPLE_SUFFIX if per_sample else ""
    if env_id is not None and f"{env_id}{suffix}" in sections:
        return f"{env_id}{suffix}"
    if f"default{suffix}" in sections:
        return f"default{suffix}"
    raise ValueError(f"hyperparams/{algo}.yml has neither a {env_id}{suffix!s} nor a default{suffix} section")


def raw_hyperparams(algo: str, env_id: str | None, per_sample: bool = False) -> dict[str, Any]:
    """A copy of the yaml section for ``env_id`` exactly as written (strings unparsed)."""
    name = check_algo(algo)
    return copy.deepcopy(_read_yaml(name)[section_name(name, env_id, per_sample)])


def load_hyperparams(algo: str, env_id: str | None, per_sample: bool = False) -> dict[str, Any]:
    """The recommended hyperparameters of ``algo`` for ``env_id``, parsed.

    Args:
        algo: ``"ppo"``, ``"a2c"``, ``"sac"``, ``"td3"`` or ``"ddpg"``.
        env_id: a registered id such as ``"MultiTeacherKD-FashionMNIST-v0"``; unknown ids (or
            ``None``) get the ``default`` section.
        per_sample: the per-sample env's section (``"<env id>/per-sample"``, else
            ``"default/per-sample"``); there ``n_envs`` is the number of sample slots, i.e.
            the student's batch size.

    Returns:
        RL Zoo's keys with Python values (see :func:`preprocess_hyperparams`): ``n_timesteps``,
        ``policy``, ``normalize`` (``False`` or ``VecNormalize`` kwargs), ``policy_kwargs``
        (a dict), schedules as callables, and the algorithm's constructor arguments.
    """
    return preprocess_hyperparams(raw_hyperparams(algo, env_id, per_sample))
