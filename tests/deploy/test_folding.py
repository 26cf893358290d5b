"""BatchNorm folding: exact, and the model itself untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deploy.helpers import reference, synthetic_batch, trained
from shufflenet import deploy

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_25"])
def test_fold_batchnorm_is_exact_and_leaves_the_model_alone(name: str) -> None:
    model = trained(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = deploy.fold_batchnorm(model)
    x = synthetic_batch(8, torch.Generator().manual_seed(3))[0]
    expected = reference(model, x)
    # float32 sums in another order: exact up to rounding, ~1e-5 relative to the logit scale.
    assert (reference(folded, x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_with_conv_bias_and_plain_batchnorm(affine: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6, affine=affine), nn.ReLU())
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    if affine:
        nn.init.uniform_(model[1].weight, 0.5, 1.5)
        nn.init.uniform_(model[1].bias, -0.5, 0.5)
    model.eval()
    folded = deploy.fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
