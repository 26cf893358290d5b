"""Parameters, FLOPs and memory access cost (MAC) per layer, at any input size.

Conventions (those of both papers):

* FLOPs are multiply-adds of convolutions and fully connected layers; element-wise operations,
  normalisation and pooling count 0 FLOPs.
* MAC is the number of elements read and written: every input feature map read, every output written,
  and every weight read once (v2 paper, Sec. 2: a 1x1 conv has MAC = hw(c1 + c2) + c1*c2). Element-wise
  operations (ReLU, add), concatenation, pooling and the copy behind a channel shuffle have MAC too --
  that is guideline G4. Views (reshape without copy, transpose, chunk) cost nothing.

Counting runs the real forward pass through a ``TorchDispatchMode``, so every ATen operation is seen,
including the functional ones (shuffle, add, concat) a module hook would miss. Each operation is
attributed to the innermost module running it. Build a model under ``torch.device("meta")`` to count
without computing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Operations that move no data in eval-mode inference even though their schema is not a view.
_FREE_OPS = {"detach", "alias", "lift_fresh", "_unsafe_view", "empty", "zeros", "ones", "empty_like", "t"}


@dataclass
class LayerStats:
    """Counts for one module (the operations it runs itself, not those of its children)."""

    name: str
    type: str
    params: int = 0
    flops: int = 0
    mac: int = 0
    output_shape: tuple[int, ...] = ()
    ops: list[str] = field(default_factory=list)


@dataclass
class ModelStats:
    """Totals and per-layer rows for one model at one input size (counts are per batch)."""

    input_size: tuple[int, ...]
    params: int
    flops: int
    mac: int
    layers: list[LayerStats]

    @property
    def mflops(self) -> float:
        """FLOPs (multiply-adds) in millions."""
        return self.flops / 1e6

    @property
    def mmac(self) -> float:
        """MAC in millions of elements."""
        return self.mac / 1e6

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def conv_flops(output: Tensor, weight: Tensor) -> int:
    """Multiply-adds of a convolution: each output element needs (c_in / groups) * k_h * k_w of them."""
    return output.numel() * math.prod(weight.shape[1:])


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


class _Counter(TorchDispatchMode):
    def __init__(self, stack: list[str], layers: dict[str, LayerStats]) -> None:
        super().__init__()
        self.stack = stack
        self.layers = layers

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in _FREE_OPS:
            return out
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        if name in ("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional"):
            outputs = outputs[:1]  # saved mean / invstd are bookkeeping, not feature maps
        if name == "max_pool2d_with_indices":
            outputs = outputs[:1]
        flops = 0
        if name == "convolution":
            flops = conv_flops(outputs[0], args[1])
        elif name in ("addmm", "mm", "bmm"):
            mat1, mat2 = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            flops = mat1.numel() * mat2.shape[-1]
        mac = sum(t.numel() for t in inputs) + sum(t.numel() for t in outputs)
        if name.endswith("_") and inputs:  # in-place (e.g. relu_): the input is the output
            mac = sum(t.numel() for t in inputs) * 2 - sum(t.numel() for t in inputs[1:])
        layer = self.layers[self.stack[-1]]
        layer.flops += flops
        layer.mac += mac
        layer.ops.append(name)
        if outputs:
            layer.output_shape = tuple(outputs[0].shape)
        return out


@contextmanager
def _module_stack(model: nn.Module, layers: dict[str, LayerStats]) -> Iterator[list[str]]:
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        layers[name] = LayerStats(
            name=name or "(model)",
            type=type(module).__name__,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
        )

        def push(_module: nn.Module, _inputs: Any, name: str = name) -> None:
            stack.append(name)

        def pop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            stack.pop()

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def analyze(
    model: nn.Module,
    input_size: tuple[int, int] = (224, 224),
    batch_size: int = 1,
    in_chans: int | None = None,
) -> ModelStats:
    """Count parameters, FLOPs and MAC of ``model`` on a (batch, C, H, W) input, per layer and in total."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    in_chans = in_chans or getattr(model, "in_chans", 3)
    x = torch.zeros(batch_size, in_chans, *input_size, device=device, dtype=dtype)
    layers: dict[str, LayerStats] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _module_stack(model, layers) as stack, _Counter(stack, layers):
            model(x)
    finally:
        model.train(was_training)
    rows = [layer for layer in layers.values() if layer.params or layer.flops or layer.mac]
    return ModelStats(
        input_size=tuple(x.shape),
        params=sum(p.numel() for p in model.parameters()),
        flops=sum(r.flops for r in rows),
        mac=sum(r.mac for r in rows),
        layers=rows,
    )


def analyze_name(name: str, input_size: tuple[int, int] = (224, 224), num_classes: int = 1000) -> ModelStats:
    """Analyse a registered model by name, built on the meta device (no memory, no compute)."""
    from shufflenet.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return analyze(model, input_size)


def conv1x1_mac(height: int, width: int, c_in: int, c_out: int, groups: int = 1) -> int:
    """MAC of a 1x1 (group) convolution by the v2 paper's formula: hw(c1 + c2) + c1*c2/g."""
    return height * width * (c_in + c_out) + c_in * c_out // groups


def mac_lower_bound(height: int, width: int, flops: int) -> float:
    """The v2 paper's bound for a 1x1 conv of B FLOPs: MAC >= 2*sqrt(hw*B) + B/hw (equality at c1 = c2)."""
    hw = height * width
    return 2 * math.sqrt(hw * flops) + flops / hw


def model_table(names: list[str] | None = None, input_size: tuple[int, int] = (224, 224)) -> list[dict[str, Any]]:
    """One row per registered model: params, MFLOPs, MAC (M elements) and the paper's figure beside ours."""
    from shufflenet.models import list_models, model_info

    rows = []
    for name in names or list_models():
        info = model_info(name)
        stats = analyze_name(name, input_size)
        paper = info.paper_mflops
        rows.append(
            {
                "name": name,
                "family": info.family,
                "groups": info.groups,
                "width_mult": info.width_mult,
                "params": stats.params,
                "mflops": round(stats.mflops, 2),
                "mac_m": round(stats.mmac, 2),
                "paper_mflops": paper,
                "paper_source": info.paper_mflops_source,
                "mflops_vs_paper_pct": round(100 * (stats.mflops / paper - 1), 2) if paper else None,
            }
        )
    return rows
