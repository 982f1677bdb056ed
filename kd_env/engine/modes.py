"""The torch modes the student is trained in, whatever the caller's.

Many training loops step their environments inside ``torch.no_grad()`` or
``torch.inference_mode()`` (skrl's trainers, CleanRL-style loops that compute actions without a
graph, torchrl's collectors). Grad mode is thread-local state that the caller's context sets
for everything it calls, so an env that trains a network inside ``step`` would build no graph
there (``loss.backward()`` fails: "element 0 of tensors does not require grad"), and tensors
made under inference mode can never be saved for a later backward (the prepared next batch, the
snapshot buffers, a student built at ``reset``). The env therefore decides: every entry point
that builds, trains or prepares the student is an :func:`entry_point`, run under
:func:`student_autograd`; the teachers keep running under ``torch.inference_mode()`` inside it.

Two more caller states leak the same way and are shut out too:

* ``torch.autocast``: a loop wrapped in mixed precision would run the student's forward in
  bfloat16/float16 and change its numbers; the engine trains in the precision its settings say.
* ``torch.compile``: a compiled function that calls ``env.step`` makes Dynamo trace into the
  env (two minutes of compilation for the synthetic env, and an update that differs from the
  eager one in the last bits); entry points are ``torch.compiler.disable``-d, so Dynamo breaks
  the graph at the call and the env runs eagerly, as it does uncompiled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar, cast

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")
"""Device types whose autocast state :func:`student_autograd` checks (the engine runs on these)."""

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def student_autograd() -> Iterator[None]:
    """Grad enabled, inference mode off and autocast off for the block, restored on exit.

    Cheap (a few thread-local flags), so entry points nest it freely. Grad mode decides which
    graphs are built, never the values computed, so the results do not depend on the caller's.
    """
    with ExitStack() as stack:
        # inference_mode(False) first: enable_grad alone does not leave inference mode
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in _AUTOCAST_DEVICES:
            # only where the caller turned it on: autocast(..., enabled=False) for a device
            # type this machine lacks warns at every call
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def entry_point(fn: F) -> F:
    """Decorate a method that builds, trains or prepares the student: it runs under
    :func:`student_autograd` and eagerly even when called from a ``torch.compile``-d function.

    ``torch.compiler.disable`` is applied on the first call, not here: it imports
    ``torch._dynamo`` (1.5 s, 170 MiB), which ``import kd_env`` should not pay for; torch's
    optimizers import it at the first ``reset`` anyway.
    """
    guarded = student_autograd()(fn)
    eager: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal eager
        if eager is None:
            eager = torch.compiler.disable(guarded, reason="kd-env trains its student eagerly, in its own torch modes")
        return eager(*args, **kwargs)

    return cast(F, wrapper)
