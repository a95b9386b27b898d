"""One module instance per call site, for attribution methods that keep state per module (DeepLift).

Captum's ``DeepLift`` stores the input and output of each nonlinearity module on the module itself and
raises when one instance runs twice in a forward, as torchvision's ResNet blocks do (every ``BasicBlock``
and ``Bottleneck`` calls ``self.relu`` two or three times). :func:`unshare_modules` returns a model that
computes the same function with each such call going to its own copy of the module.
"""

import copy
from typing import Dict, Optional, Set

import torch.fx
import torch.nn as nn

__all__ = ["unshare_modules"]

# nn.Module's own hook tables (forward, backward, state-dict hooks), by attribute name; a GraphModule has
# further tables of its own (graph-editing hooks) that must stay as they are
_MODULE_HOOK_TABLES = tuple(name for name in vars(nn.Module()) if "hook" in name)


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces one module's own ``forward``: every submodule call is recorded as a single ``call_module``
    node and never traced into, so the graph says exactly which submodules this forward calls, how often."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _is_stateless(module: nn.Module) -> bool:
    """No parameters and no buffers anywhere below: a deep copy computes the same function and unties nothing."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _shell_copy(module: nn.Module) -> nn.Module:
    """A new object of the module's class sharing its submodules, parameters, buffers and attributes, but with
    tables of its own (submodules, parameters, buffers, hooks): installing a submodule in the shell leaves the
    original as it is."""
    shell = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, (dict, set)):
            shell.__dict__[name] = copy.copy(value)
    return shell


def _own_forward_graphs(model: nn.Module) -> Dict[int, Optional[torch.fx.Graph]]:
    """The graph of each module's own forward, by ``id``; ``None`` for a forward torch.fx cannot trace.

    Only modules that have submodules and a forward of their own are traced (a leaf calls no module; a
    ``ModuleList`` is never called). Each trace runs on a shell copy, so whatever a forward writes on ``self``
    while it is traced does not reach the model. A forward that cannot be traced is kept as it is, except when
    one of its direct submodules is stateless: those (activations, pooling) are the modules forwards call
    repeatedly, and how often this forward calls them cannot be checked, so that is a ``ValueError``.
    """
    graphs: Dict[int, Optional[torch.fx.Graph]] = {}
    for path, module in model.named_modules():
        if id(module) in graphs or not module._modules or type(module).forward is nn.Module.forward:
            continue
        try:
            graphs[id(module)] = _OwnForwardTracer().trace(_shell_copy(module))
        except Exception as exc:
            stateless = [name for name, child in module.named_children() if _is_stateless(child)]
            if stateless:
                where = f"{type(module).__name__} at {path!r}" if path else "its forward"
                raise ValueError(
                    f"{type(model).__name__}: DeepLift needs each module called once per forward, and torch.fx "
                    f"cannot trace {where} to check how often it calls {', '.join(stateless)} (or give each "
                    f"call its own module): {type(exc).__name__}: {exc}"
                ) from exc
            graphs[id(module)] = None
    return graphs


class _Unsharer:
    """Rebuilds a model bottom-up from the graphs of its modules' own forwards.

    The first call site of a module keeps the module; every later call site of a stateless one, in the same
    forward or in another module's, gets a deep copy registered next to the call as ``<name>_<k>`` (``relu``,
    ``relu_1``, ``relu_2``; ``layer_relu_1`` for a call of ``self.layer.relu``). A module whose forward changes
    that way becomes a ``torch.fx.GraphModule`` of the same class name; its ancestors become shell copies.
    Everything else is the model's own objects: a rebuild of a deep copy is independent of the original.
    """

    def __init__(self, graphs: Dict[int, Optional[torch.fx.Graph]]):
        self.graphs = graphs
        self.rebuilt: Dict[int, nn.Module] = {}
        self.called: Set[int] = set()  # modules whose first call site has been seen

    def rebuild(self, module: nn.Module) -> nn.Module:
        key = id(module)
        if key not in self.rebuilt:
            self.rebuilt[key] = self._rebuild(module)
        return self.rebuilt[key]

    def _rebuild(self, module: nn.Module) -> nn.Module:
        children = {name: (child, self.rebuild(child)) for name, child in module._modules.items() if child is not None}
        changed = {name: new for name, (old, new) in children.items() if new is not old}
        graph = self.graphs.get(id(module))
        shell = _shell_copy(module) if changed or graph is not None else module
        for name, new in changed.items():
            shell._modules[name] = new
        if graph is None or not self._give_each_call_its_own(module, shell, graph):
            return shell if changed else module
        rewritten = torch.fx.GraphModule(shell, graph, class_name=type(module).__name__)
        rewritten.training = module.training
        for name in _MODULE_HOOK_TABLES:  # hooks on the module itself still run
            rewritten.__dict__[name] = copy.copy(getattr(module, name))
        return rewritten

    def _give_each_call_its_own(self, module: nn.Module, shell: nn.Module, graph: torch.fx.Graph) -> bool:
        """Points every repeated call of a stateless module in ``graph`` at a new copy installed in ``shell``;
        whether any call changed."""
        changed = False
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            callee = module.get_submodule(node.target)
            if id(callee) not in self.called or not _is_stateless(callee):
                self.called.add(id(callee))
                continue
            stem, k = node.target.replace(".", "_"), 1
            while hasattr(shell, f"{stem}_{k}"):
                k += 1
            shell.add_module(f"{stem}_{k}", copy.deepcopy(shell.get_submodule(node.target)))
            node.target = f"{stem}_{k}"
            changed = True
        return changed


def unshare_modules(model: nn.Module) -> nn.Module:
    """The model with each call of a module instance that runs more than once per forward going to its own copy.

    DeepLift keeps per-module state for its nonlinearities (one input, one output) and so needs every module
    called once; the copy computes exactly what the model computes (same outputs, same train/eval mode).

    How: each module's own forward is traced by torch.fx with its submodules as leaves, which shows which
    submodules it calls and how often; the first call of a module keeps it, every later call of a stateless
    one (in any forward) gets a copy, registered next to the call (``layer1.0.relu`` and ``layer1.0.relu_1``,
    ``layer1.0.relu_2``, ...). A module
    whose calls change becomes a ``torch.fx.GraphModule`` of the same class name (holding what its forward
    uses, and its hooks); the rest keeps its classes and attributes. The result is a deep copy: its weights,
    buffers and modes are its own (``.eval()`` or training on it leave the model as it is), and the model is
    not changed. When no call needs a copy, the model itself is returned (no copy is made).

    What is copied: only stateless modules, with no parameters or buffers (activations, pooling, dropout),
    which are what DeepLift hooks. A module with weights that is called twice stays shared, called twice:
    copies would untie the weights (training one copy would not change the other) and duplicate them, and
    DeepLift does not hook such modules (stateless modules inside one still run twice; DeepLift then raises).

    Limits: a forward torch.fx cannot trace (data-dependent Python control flow, ``len`` of an input) is kept
    as it is; since its calls cannot be checked, a direct stateless submodule of such a module is a
    ``ValueError``, but one with weights (a wrapped network) is trusted to be called once. A rewritten forward
    is torch.fx's record of the tensor operations: Python side effects in it (counters) are not replayed. The
    modules around a rewritten one are copies with attributes of their own: a copied pass counter counts apart.

    Args:
        model (nn.Module): any model; left unchanged.

    Returns:
        nn.Module: ``model`` itself if no stateless module is called twice, else the rebuilt copy.

    Raises:
        ValueError: naming the model's class, if a forward that calls a stateless module cannot be traced
            (the tracing error is chained).
    """
    if _Unsharer(_own_forward_graphs(model)).rebuild(model) is model:  # a dry run: nothing is called twice
        return model
    # the rewrite runs on a deep copy, not the dry run's result deep-copied: a GraphModule's deep copy drops
    # its forward hooks
    copied = copy.deepcopy(model)
    return _Unsharer(_own_forward_graphs(copied)).rebuild(copied)
