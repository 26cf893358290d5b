"""Shared by the deployment tests: a synthetic four-class task, a small model trained on it, logit checks."""

from __future__ import annotations

import torch
from torch import nn

from shufflenet import create_model, deploy

IMG = 32
NUM_CLASSES = 4
RUN_CLASSES = ["a", "b", "c"]  # the run folder of the `run_dir` fixture (conftest.py)
RUN_COUNTS = {"a": 12, "b": 6, "c": 3}  # training images per class: unbalanced, so stratification shows

# CPU feature sets as deploy.cpu_features() reports them, for the int8 settings chosen per CPU kind
AVX2 = {"avx2": True}
AVX512 = {"avx2": True, "avx512f": True}
AVX512_VNNI = {**AVX512, "avx512_vnni": True}
ALDER_LAKE = {"avx2": True, "avx_vnni": True}
SAPPHIRE_RAPIDS = {**AVX512_VNNI, "avx_vnni": True, "amx_int8": True, "amx_bf16": True, "avx512_bf16": True}


def synthetic_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of four easy classes (horizontal / vertical stripes, two colour casts)."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    images = torch.randn(n, 3, IMG, IMG, generator=generator) * 0.5
    wave = torch.sin(3 * torch.linspace(0, 2 * torch.pi, IMG))
    color = torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1).expand(3, IMG, IMG)
    patterns = torch.stack(
        [wave.view(1, IMG, 1).expand(3, IMG, IMG), wave.view(1, 1, IMG).expand(3, IMG, IMG), color, -color]
    )
    return images + patterns[labels], labels


def trained(name: str) -> nn.Module:
    """A small model trained for 40 steps on the synthetic task: reduced precision is judged on a model
    whose predictions mean something (random weights make every perturbation look chaotic)."""
    torch.manual_seed(0)  # the initial weights: module-scoped fixtures must not depend on test order
    generator = torch.Generator().manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        images, labels = synthetic_batch(32, generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_close_logits(ref: torch.Tensor, got: torch.Tensor, rel: float, min_top1: float) -> None:
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # The check means something only if the model predicts several classes on these inputs.
    assert ref.argmax(1).unique().numel() == NUM_CLASSES
    check = deploy.agreement(ref, got)
    assert check["max_abs_diff"] <= rel * ref.abs().max().item(), check
    assert check["top1_agreement"] >= min_top1, check
