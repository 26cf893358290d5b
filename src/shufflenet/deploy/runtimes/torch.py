"""The PyTorch runtime: eager (or torch.compile) on a BN-folded, channels_last copy of the model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from shufflenet.deploy.backends import SUPPORTED
from shufflenet.deploy.folding import fold_batchnorm
from shufflenet.deploy.inputs import _in_chans
from shufflenet.deploy.runtimes.base import CompiledModel


class TorchModel(CompiledModel):
    """PyTorch eager (or torch.compile) on a BN-folded, channels_last copy of the model."""

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        channels_last: bool = True,
        torch_compile: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__(_in_chans(model), None, threads)
        if precision not in SUPPORTED["torch"]:
            raise ValueError(
                f"backend 'torch' runs {' and '.join(SUPPORTED['torch'])}, not {precision!r}; "
                "for int8 use backend='onnxruntime' or 'openvino'"
            )
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        folded = fold_batchnorm(model).to(dtype=self.dtype, memory_format=self.memory_format)
        for param in folded.parameters():
            param.requires_grad_(False)
        self.module: Callable[[Tensor], Tensor] = folded
        if torch_compile:
            self.module = torch.compile(folded, dynamic=False)

    def _run(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(dtype=self.dtype, memory_format=self.memory_format)
            return self.module(x).float()
