"""Batch augmentation: MixUp and CutMix (torchvision.transforms.v2) and the losses and accuracy they need."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.transforms import v2 as T

__all__ = ["batch_mixer", "hard_labels"]


def batch_mixer(
    mixup_alpha: float, cutmix_alpha: float, num_classes: int
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """MixUp, CutMix or (both given) a random one of them per batch, as torchvision's reference does.

    Takes a float batch and integer labels; returns the mixed batch and soft targets (N, classes) that sum
    to 1. None when both alphas are 0.
    """
    mixers: list[T.Transform] = []
    if mixup_alpha > 0:
        mixers.append(T.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(T.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else T.RandomChoice(mixers)


def hard_labels(targets: Tensor) -> Tensor:
    """Class indices of ``targets``: as given, or the larger share of a mixed pair for soft targets.

    Training accuracy on mixed batches counts a prediction right when it names the class with the larger
    share of the image (MixUp's lambda, CutMix's area).
    """
    return targets.argmax(1) if targets.ndim == 2 else targets
