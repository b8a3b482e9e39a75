"""``torch.compile`` for the networks that run every iteration, made once per network and kept.

``compile=True`` (or a backend name, e.g. ``"aot_eager"``) on an optimizing inverter (``pixel``, ``dip``) or on
the pipeline call (``--compile``) runs the target's feature function (its truncated forward: threads share the
compiled function), the DIP generator, the UNet and the VAE decoder through :func:`torch.compile`; the results
equal the eager ones within floating-point tolerance. It is off by default. ``compile`` may also name a mode
(:data:`MODES`). A network whose compiled function fails (to compile or to run) runs eagerly from then on, with one
warning per ``compile`` value (:class:`_EagerFallback`); a failure inside a lazily compiled backward is not caught.

Example:
    >>> unet = compiled(pipe.unet)                       # the same object at every call
    >>> feature = compiled_feature(target, "blocks.4")   # images -> features of blocks.4
    >>> unet = compiled(pipe.unet, compile="reduce-overhead")
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["MODES", "backend", "compiled", "compiled_feature", "feature_function", "mark_step", "mode"]

# The modes of torch.compile (inductor); those of _CUDA_GRAPH_MODES replay CUDA graphs.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
_WARNED: set = set()  # the `compile` values whose failure was reported (one warning each)
# Exceptions that are control flow, not failures: activation checkpointing ends a recompute early with one.
_CONTROL_FLOW = (torch.utils.checkpoint._StopRecomputationError,)


@functools.lru_cache(maxsize=1)
def _backends() -> frozenset[str]:
    """Every ``torch.compile`` backend (asked once: the loops check ``compile`` at every call)."""
    import torch._dynamo

    return frozenset(torch._dynamo.list_backends(exclude_tags=()))


def backend(compile: bool | str | None) -> str | None:
    """``compile`` -> a ``torch.compile`` backend: ``True`` or a mode of :data:`MODES` is ``"inductor"`` (the
    default), another string names a backend (e.g. ``"aot_eager"``, ``"cudagraphs"``), ``False`` is none.

    Raises:
        ValueError: ``compile`` is none of these; the message lists the modes and backends.
    """
    if compile is True:
        return "inductor"
    if compile is False or compile is None:
        return None
    if isinstance(compile, str) and compile in MODES:
        return "inductor"
    if isinstance(compile, str) and compile in _backends():
        return compile
    raise ValueError(
        f"`compile` must be True, False, a torch.compile mode ({', '.join(MODES)}) or a torch.compile "
        f"backend ({', '.join(sorted(_backends()))}), got {compile!r}."
    )


def mode(compile: bool | str | None) -> str | None:
    """The ``torch.compile`` mode of ``compile``: one of :data:`MODES`, else ``None`` (the backend's own).

    Example:
        >>> mode("reduce-overhead"), mode(True), mode("aot_eager")
        ('reduce-overhead', None, None)
    """
    backend(compile)  # checks the value
    return compile if isinstance(compile, str) and compile in MODES else None


def mark_step(compile: bool | str | None) -> None:
    """Marks the start of an optimization iteration for the CUDA graphs of ``"reduce-overhead"`` and
    ``"max-autotune"`` (``torch.compiler.cudagraph_mark_step_begin``: the outputs of the last iteration's
    graphs may be overwritten); nothing for other values."""
    if mode(compile) in _CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


class _EagerFallback:
    """A compiled function that, once it fails (to compile or to run), runs its eager function instead.

    The first failure for a ``compile`` value is one warning (``RuntimeWarning``) naming the network and
    the error; the function then stays eager. An error the eager function raises as well is raised.
    """

    def __init__(self, fn: Callable, eager: Callable, what: str, compile: bool | str):
        self.fn, self.eager, self.what, self.compile = fn, eager, what, compile
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.fn(*args, **kwargs)
            except _CONTROL_FLOW:
                raise
            except Exception as err:  # noqa: BLE001 - any compiler error; the eager call re-raises real ones
                self.failed = True
                if self.compile not in _WARNED:
                    _WARNED.add(self.compile)
                    warnings.warn(
                        f"torch.compile (`compile`={self.compile!r}) failed for {self.what} "
                        f"({type(err).__name__}: {str(err)[:300]}); it and any other network whose "
                        f"compilation fails run eagerly.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        return self.eager(*args, **kwargs)


def compiled(
    module: nn.Module, fn: Callable | None = None, key: str = "forward", compile: bool | str = True
) -> Callable:
    """``torch.compile(fn or module)`` with the backend and mode of ``compile``, made once per ``(module, key,
    backend, mode)`` and kept on the module (in its ``__dict__``, not as a submodule: state dicts and ``.to()``
    are unchanged); it runs eagerly once it fails (:class:`_EagerFallback`)."""
    name, how = backend(compile), mode(compile)
    cache = module.__dict__.setdefault("_diffinv_compiled", {})
    if (key, name, how) not in cache:
        eager = fn if fn is not None else module
        options = {"mode": how} if how is not None else {}
        cache[key, name, how] = _EagerFallback(
            torch.compile(eager, backend=name, **options), eager, f"{type(module).__name__}.{key}", compile
        )
    return cache[key, name, how]


def compiled_feature(
    target: nn.Module, layer: str, compile: bool | str = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The target's ``images -> features at layer``, compiled (kept per target, layer and backend).

    The target's truncated forward (:meth:`TargetNetwork.extractor <diffinv.targets.TargetNetwork.extractor>`, a
    ``torch.fx`` graph without hooks) is made first, so ``torch.compile`` traces a finished graph."""
    if hasattr(target, "extractor"):
        target.extractor((layer,))
    return compiled(target, functools.partial(target.feature, layer=layer), f"feature:{layer}", compile)


def feature_function(
    target: nn.Module, layer: str, compile: bool | str = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> features at layer``: compiled when ``compile`` names a backend, else the eager ``target.feature``."""
    if backend(compile) is None:
        return functools.partial(target.feature, layer=layer)
    return compiled_feature(target, layer, compile)
