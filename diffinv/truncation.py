"""Truncated forward passes: a network's features at named layers, and the network run from a layer's features.

No hook and no exception: the forward is traced by ``torch.fx`` (as torchvision's ``create_feature_extractor``
does) through the modules that enclose the requested layers only; every other module is called as it is. The
request becomes a small graph (:meth:`LayerGraph.extractor`) that stops after the last requested layer and
returns their outputs; :meth:`LayerGraph.split` replaces one layer's output by given features. A forward
``torch.fx`` cannot trace (control flow on tensor values) runs whole on per-call shallow copies of the enclosing
modules that record the outputs (:class:`ShadowForward`). Both hold the network's own modules, give bit-identical
features and keep no state between calls: threads share them, ``torch.compile`` compiles them.

Example:
    >>> graph = LayerGraph.trace(model)
    >>> graph.extractor(model, ("layer2", "layer3"))(x)      # {"layer2": ..., "layer3": ...}
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence

import torch
import torch.fx
from torch import nn

__all__ = ["TRACE_TURNS", "LayerGraph", "ShadowForward"]

# torch.fx patches torch.nn.Module process-wide while it traces; two traces at once would restore each
# other's patches, so traces (one per network and layer set, when it is first asked for) take turns; a plugin
# that traces a network itself holds it too. Calls are never serialized.
TRACE_TURNS = threading.Lock()


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's layers that torch.fx runs as one operation, and its functions it must not trace into."""
    try:
        from timm.layers import _fx
    except ImportError:
        return (), ()
    return tuple(_fx.get_notrace_modules()), tuple(_fx.get_notrace_functions())


class _LayerTracer(torch.fx.Tracer):
    """Traces through the modules named in ``enclosing`` only (every other module is one call) and records, for
    every module call, the node of its output (a name for an output that is not one tensor).

    Only the tracing thread is traced: another thread calling a module meanwhile (``torch.fx`` patches
    ``nn.Module.__call__`` for everyone while it traces) runs it as usual.
    """

    def __init__(self, enclosing: set[str]):
        self._notrace, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self._enclosing = enclosing
        self.calls: dict[str, list[torch.fx.Node | str]] = {}
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name not in self._enclosing or isinstance(m, self._notrace)

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        self.calls.setdefault(self.path_of_module(m), []).append(
            out.node if isinstance(out, torch.fx.Proxy) else type(out).__name__
        )
        return out

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


class LayerGraph:
    """A network's forward traced by ``torch.fx`` through the modules enclosing some layers: for each module
    called, the nodes of its outputs (one per call).

    Attributes:
        graph: the traced forward (it holds no tensors: the graphs made from it take the network's modules).
        calls: module name -> the output node of each of its calls, in order (a type name where the output
            is not one tensor).
    """

    def __init__(self, graph: torch.fx.Graph, calls: dict[str, list]):
        self.graph, self.calls = graph, calls

    @classmethod
    def trace(cls, model: nn.Module, layers: Sequence[str]) -> LayerGraph:
        """Traces ``model``'s forward through the modules that enclose ``layers`` (in its current train/eval mode;
        nothing of it is changed).

        Raises:
            Exception: whatever ``torch.fx`` raises for a forward it cannot trace (data-dependent control flow).
        """
        enclosing = {".".join(layer.split(".")[:i]) for layer in layers for i in range(layer.count(".") + 1)}
        tracer = _LayerTracer(enclosing)
        with TRACE_TURNS:
            graph = tracer.trace(model)
        return cls(graph, tracer.calls)

    def _copy(self) -> tuple[torch.fx.Graph, dict, object]:
        graph, env = torch.fx.Graph(), {}
        output = graph.graph_copy(self.graph, env)
        return graph, env, output

    def _node(self, layer: str, env: dict) -> torch.fx.Node:
        first = self.calls[layer][0]
        if not isinstance(first, torch.fx.Node):
            raise ValueError(f"`layer` {layer!r} outputs a {first}, not one tensor: its output cannot be a feature.")
        return env[first]

    def missing(self, layers: Sequence[str]) -> list[str]:
        """The layers of ``layers`` that do not run in the traced forward."""
        return [layer for layer in layers if layer not in self.calls]

    def extractor(self, model: nn.Module, layers: Sequence[str]) -> torch.fx.GraphModule:
        """``x -> {layer: output}`` for ``layers`` (a layer's first call), the forward cut after the last of them."""
        graph, env, _ = self._copy()
        graph.output({layer: self._node(layer, env) for layer in layers})
        return _pruned(torch.fx.GraphModule(model, graph, class_name="TruncatedForward"))

    def split(self, model: nn.Module, layer: str, substitute: Callable) -> torch.fx.GraphModule:
        """``(x, features) -> output`` of the whole network with ``layer``'s output replaced by
        ``substitute(output, features, layer)``; everything else still comes from ``x``.

        Raises:
            ValueError: ``layer`` runs more than once in a forward pass (the message counts the calls).
        """
        if len(self.calls[layer]) != 1:
            raise ValueError(
                f"layer {layer!r} runs {len(self.calls[layer])} times in one forward pass (a shared "
                f"module); replacing its output would not be a split at one point."
            )
        graph, env, output = self._copy()
        graph.output(output)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        with graph.inserting_after(placeholders[0]):
            features = graph.placeholder("diffinv_features")
        own = env[self.calls[layer][0]] if isinstance(self.calls[layer][0], torch.fx.Node) else None
        if own is None:
            raise ValueError(f"layer {layer!r} outputs a {self.calls[layer][0]}, not one tensor.")
        with graph.inserting_after(own):
            replaced = graph.call_function(substitute, (own, features, layer))
        own.replace_all_uses_with(replaced, delete_user_cb=lambda user: user is not replaced)
        return _pruned(torch.fx.GraphModule(model, graph, class_name="SplitForward"))


def _pruned(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``module`` without the nodes its output does not need (the forward after the last requested layer)."""
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


class ShadowForward:
    """The layers of a network whose forward ``torch.fx`` cannot trace (Python control flow on tensor values):
    the whole forward runs on per-call shallow copies of the modules that enclose the layers, whose copies of
    the layers record their outputs (or replace one of them).

    The copies share the network's parameters and buffers and change nothing of it, so calls in other threads
    are not affected; no hook, no exception. The forward is not cut after the last layer (it runs to the end).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def _run(self, x: torch.Tensor, layers: Sequence[str], replace: Callable | None) -> tuple[object, dict]:
        root = _shallow(self.model)
        shadows, calls = {"": root}, {layer: [] for layer in layers}
        for layer in layers:
            parts = layer.split(".")
            for i in range(1, len(parts) + 1):
                path = ".".join(parts[:i])
                if path not in shadows:
                    parent = shadows[".".join(parts[: i - 1])]
                    shadows[path] = parent._modules[parts[i - 1]] = _shallow(parent._modules[parts[i - 1]])
        for layer in layers:
            shadow = shadows[layer]
            shadow.__dict__["forward"] = _recording(shadow.forward, calls[layer], replace)
        return root(x), calls

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{layer: output}`` for ``layers`` (a layer's first call).

        Raises:
            ValueError: a layer does not run in the forward pass.
        """
        _, calls = self._run(x, layers, None)
        missing = [layer for layer in layers if not calls[layer]]
        if missing:
            raise ValueError(f"`layers` {missing} do not run in the network's forward pass.")
        return {layer: calls[layer][0] for layer in layers}

    def split(self, x: torch.Tensor, features: torch.Tensor, *, layer: str, substitute: Callable) -> torch.Tensor:
        """The network's output with ``layer``'s output replaced by ``substitute(output, features, layer)``.

        Raises:
            ValueError: the layer runs more than once (or never) in a forward pass.
        """
        output, calls = self._run(x, [layer], lambda out: substitute(out, features, layer))
        if len(calls[layer]) != 1:
            raise ValueError(
                f"layer {layer!r} runs {len(calls[layer])} times in one forward pass (a shared "
                f"module); replacing its output would not be a split at one point."
            )
        return output


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing everything but its dict of submodules (which the copy may change)."""
    twin = copy.copy(module)
    twin.__dict__["_modules"] = dict(module._modules)
    return twin


def _recording(forward: Callable, calls: list, replace: Callable | None) -> Callable:
    def recorded(*args, **kwargs):
        output = forward(*args, **kwargs)
        calls.append(output)
        return replace(output) if replace is not None else output

    return recorded
