"""``torch.compile`` for the networks that run every iteration, made once per network and kept.

``compile=True`` (or a backend name, e.g. ``"aot_eager"``) on an optimizing inverter (``pixel``,
``dip``) or on the pipeline call (``--compile`` on the command line) runs the target's feature function, the DIP generator,
the UNet and the VAE decoder through :func:`torch.compile`. The results equal the eager ones
within floating-point tolerance; the first iterations pay the compile time (up to a minute on
CPU for Lite0 or the DIP generators). It is off by default: on CPU, inductor made the
channels-last Lite0 and DIP generators slower, not faster (51 -> 75 and 51 -> 65 ms forward+backward
at 4 x 128 x 128; ``examples/benchmark_demo.py --skip-demo --breakdown --compile`` and
``examples/benchmark_pipeline.py --compile`` print the figures).

Example:
    >>> unet = compiled(pipe.unet)                       # the same object at every call
    >>> feature = compiled_feature(target, "blocks.4")   # images -> features of blocks.4
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["backend", "compiled", "compiled_feature", "feature_function"]


@functools.lru_cache(maxsize=1)
def _backends() -> frozenset[str]:
    """Every ``torch.compile`` backend (asked once: the loops check ``compile`` at every call)."""
    import torch._dynamo

    return frozenset(torch._dynamo.list_backends(exclude_tags=()))


def backend(compile: bool | str) -> str | None:
    """``compile`` -> a ``torch.compile`` backend: ``True`` is ``"inductor"`` (the default), a string names
    one (e.g. ``"aot_eager"``, ``"cudagraphs"``), ``False`` is none."""
    if compile is True:
        return "inductor"
    if compile is False or compile is None:
        return None
    if isinstance(compile, str) and compile in _backends():
        return compile
    raise ValueError(f"`compile` must be True, False or a torch.compile backend "
                     f"({', '.join(sorted(_backends()))}), got {compile!r}.")


def compiled(module: nn.Module, fn: Callable | None = None, key: str = "forward", compile: bool | str = True) -> Callable:
    """``torch.compile(fn or module)`` with the backend of ``compile``, made once per ``(module, key,
    backend)`` and kept on the module (in its ``__dict__``, not as a submodule: state dicts and ``.to()``
    are unchanged)."""
    name = backend(compile)
    cache = module.__dict__.setdefault("_diffinv_compiled", {})
    if (key, name) not in cache:
        cache[key, name] = torch.compile(fn if fn is not None else module, backend=name)
    return cache[key, name]


def compiled_feature(target: nn.Module, layer: str, compile: bool | str = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """The target's ``images -> features at layer``, compiled (kept per target, layer and backend)."""
    return compiled(target, functools.partial(target.feature, layer=layer), f"feature:{layer}", compile)


def feature_function(target: nn.Module, layer: str, compile: bool | str = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> features at layer``: compiled when ``compile`` names a backend, else the eager ``target.feature``."""
    if backend(compile) is None:
        return functools.partial(target.feature, layer=layer)
    return compiled_feature(target, layer, compile)
