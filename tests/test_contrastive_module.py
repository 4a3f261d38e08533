"""VlmkdContrastiveLoss's training-side options: image centring, projection, a bias-free adaptor."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkd.ops import VlmkdContrastiveLoss
from vlmkd.ops.contrastive import BatchCentering
from vlmkd.ops.reference import contrastive_ref


def test_batch_centering_removes_the_batch_mean_and_uses_its_running_mean_in_eval() -> None:
    torch.manual_seed(0)
    centring = BatchCentering(5, momentum=0.5)
    v = (torch.rand(8, 5) + 3.0).requires_grad_()
    out = centring(v)
    torch.testing.assert_close(out, v - v.mean(dim=0))
    torch.testing.assert_close(centring.running_mean, 0.5 * v.detach().mean(dim=0))
    grad = torch.randn(8, 5)
    out.backward(grad)
    torch.testing.assert_close(v.grad, grad - grad.mean(dim=0))  # a projection: never amplified
    centring.eval()
    torch.testing.assert_close(centring(v.detach()), v.detach() - centring.running_mean)


def test_module_with_centring_and_projection_equals_the_reference_on_the_transformed_features() -> None:
    torch.manual_seed(1)
    module = VlmkdContrastiveLoss(7, 5, image_center=True, image_projection=True, adaptor_bias=False).double()
    with torch.no_grad():
        module.image_projection.weight.add_(0.1 * torch.randn(5, 5, dtype=torch.float64))
    v, t = torch.rand(6, 5, dtype=torch.float64) + 1.0, torch.randn(6, 7, dtype=torch.float64)
    projected = module.image_projection(v - v.mean(dim=0))
    zero = torch.zeros(5, dtype=torch.float64)
    expected = contrastive_ref(projected, t, module.adaptor.weight, zero, module.logit_scale)
    assert module(v, t).item() == pytest.approx(expected.item(), rel=1e-10)
    assert module.adaptor.bias is None


def test_identical_centred_captions_give_a_constant_loss_and_no_gradient_without_an_adaptor_bias() -> None:
    """One caption for every image is zero once centred: the term must then be inert, not push the encoder."""
    module = VlmkdContrastiveLoss(7, 5, image_center=True, image_projection=True, adaptor_bias=False).double()
    v = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    loss = module(v, torch.zeros(6, 7, dtype=torch.float64))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(6))
    assert v.grad is not None and not v.grad.any()
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())
