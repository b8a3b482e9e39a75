"""Truncated forward passes: a network's features at named layers, and the network run from a layer's features.

No hook and no exception: for each request the forward is traced by ``torch.fx`` (as torchvision's
``create_feature_extractor`` does) through the modules that enclose the requested layers only; every other
module, the requested layers included, is called as it is (so a module's own Python state, a flag its
forward reads, keeps working). The request becomes a small graph of its own
(:meth:`LayerGraph.extractor`): the forward up to the last requested layer (everything after it is
removed), which returns those layers' outputs. :meth:`LayerGraph.split` is the same graph with one layer's
output replaced by given features. A network that ``torch.fx`` cannot trace
runs its ``nn.Sequential`` containers child by child up to the layer instead (:class:`SequentialChain`),
which is what ``nn.Sequential.forward`` itself does.

The graphs hold the network's own modules (no copies of weights), run the same operations in the same
order (the features are bit-identical to the plain forward's) and keep no state between calls: threads
share them, and ``torch.compile`` compiles them like any module.

Example:
    >>> graph = LayerGraph.trace(model)
    >>> graph.extractor(model, ("layer2", "layer3"))(x)      # {"layer2": ..., "layer3": ...}
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
import torch.fx
from torch import nn

__all__ = ["LayerGraph", "SequentialChain"]

# torch.fx patches torch.nn.Module process-wide while it traces; two traces at once would restore each
# other's patches, so traces (one per network, when it is made) take turns. Calls are never serialized.
_TRACE_TURNS = threading.Lock()


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
            out.node if isinstance(out, torch.fx.Proxy) else type(out).__name__)
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
    def trace(cls, model: nn.Module, layers: Sequence[str]) -> "LayerGraph":
        """Traces ``model``'s forward through the modules that enclose ``layers`` (in its current train/eval mode;
        nothing of it is changed).

        Raises:
            Exception: whatever ``torch.fx`` raises for a forward it cannot trace (data-dependent control flow).
        """
        enclosing = {".".join(layer.split(".")[:i]) for layer in layers for i in range(layer.count(".") + 1)}
        tracer = _LayerTracer(enclosing)
        with _TRACE_TURNS:
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
            raise ValueError(f"layer {layer!r} runs {len(self.calls[layer])} times in one forward pass (a shared "
                             f"module); replacing its output would not be a split at one point.")
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


class SequentialChain:
    """The truncated forward of a network that ``torch.fx`` cannot trace: its ``nn.Sequential`` containers run
    child by child (as ``nn.Sequential.forward`` does) up to the last requested layer.

    Only layers whose every enclosing module (the network included) is an ``nn.Sequential`` are reachable
    (:meth:`reachable`).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def reachable(self, layer: str) -> bool:
        """Whether every module enclosing ``layer`` is an ``nn.Sequential``."""
        module, parts = self.model, layer.split(".")
        for part in parts[:-1] + [None]:
            if not isinstance(module, nn.Sequential):
                return False
            if part is None:
                return parts[-1] in module._modules
            module = module._modules.get(part)
        return False

    def _run(self, module: nn.Sequential, x, prefix: str, wanted: set, found: dict, replace) -> tuple[object, bool]:
        for name, child in module._modules.items():
            path = prefix + name
            if any(w.startswith(path + ".") for w in wanted) or (replace and replace[0].startswith(path + ".")):
                x, done = self._run(child, x, path + ".", wanted, found, replace)
                if done:
                    return x, True
            else:
                x = child(x)
            if path in wanted and path not in found:
                found[path] = x
            if replace and path == replace[0]:
                x = replace[1](x)
            if not replace and len(found) == len(wanted):
                return x, True
        return x, False

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{layer: output}`` for ``layers``, running no further than the last of them."""
        found: dict = {}
        self._run(self.model, x, "", set(layers), found, None)
        return {layer: found[layer] for layer in layers}

    def split(self, x: torch.Tensor, features: torch.Tensor, *, layer: str, substitute: Callable) -> torch.Tensor:
        """The network's output with ``layer``'s output replaced by ``substitute(output, features, layer)``."""
        return self._run(self.model, x, "", set(), {}, (layer, lambda out: substitute(out, features, layer)))[0]
