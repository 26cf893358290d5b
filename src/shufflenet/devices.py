"""Where a model runs: device names (``auto`` included) and the autocast dtype, shared by training and inference."""

from __future__ import annotations

import torch

AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda (this process's GPU under torchrun), then mps, then cpu; errors for unavailable ones."""
    kind = name.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is available to PyTorch; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available; use --device cpu")
    if kind not in DEVICES:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    return torch.device(kind)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (``None``: full float32)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}; got {mode!r}")
    if mode == "none":
        return None
    if mode == "fp16":
        if device.type == "cpu":
            raise ValueError("--amp fp16 needs a GPU; on a CPU use --amp bf16 or --amp none")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs, even with native bf16 (AVX-512 BF16), bf16 autocast measured slower end to end than
    # float32 with channels_last, and its first epoch pays for new kernels (docs/training.md).
    return None
