"""VlmkdContrastiveLoss's training-side options: image centring, projection, a bias-free adaptor."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkd.losses import VlmkdContrastiveLoss
from vlmkd.losses.contrastive import BatchCentering
from vlmkd.ops.contrastive_reference import contrastive_ref


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


def _within_class_infonce(v, u, labels, scale):
    """Symmetric InfoNCE with every other-class pair masked out, averaged over images in classes of >= 2."""
    logits = scale * torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(u, dim=1).T
    same = labels[:, None] == labels[None, :]
    logits = logits.masked_fill(~same, float("-inf"))
    rows = logits.logsumexp(dim=1) - logits.diagonal()
    columns = logits.logsumexp(dim=0) - logits.diagonal()
    return ((rows + columns) / 2)[same.sum(dim=1) >= 2].mean()


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_negatives_within_the_class_equal_a_masked_contrast_forward_and_backward(backend: str) -> None:
    torch.manual_seed(3)
    labels = torch.tensor([0, 2, 0, 1, 1, 1, 0, 3, 2])  # class 3 alone: it adds nothing
    module = VlmkdContrastiveLoss(
        7, 5, negatives="class", temperature=0.3, image_center=False, image_projection=False, adaptor_bias=True,
        backend=backend,
    ).double()  # fmt: skip
    with torch.no_grad():
        module.adaptor.bias.normal_()
    v = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(9, 7, dtype=torch.float64)
    loss = module(v, t, labels)
    loss.backward()
    got = (v.grad.clone(), module.adaptor.weight.grad.clone(), module.adaptor.bias.grad.clone())
    v_ref = v.detach().clone().requires_grad_()
    weight = module.adaptor.weight.detach().clone().requires_grad_()
    bias = module.adaptor.bias.detach().clone().requires_grad_()
    expected = _within_class_infonce(v_ref, t @ weight.T + bias, labels, module.logit_scale.exp())
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for a, b in zip(got, (v_ref.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert v.grad[7].abs().max() == 0  # the lone image gets no gradient


def test_negatives_within_the_class_at_equal_similarities_sit_exactly_at_their_chance_level() -> None:
    from vlmkd.losses.objective import contrast_chance

    labels = torch.tensor([4, 4, 4, 1, 1, 7, 4])
    module = VlmkdContrastiveLoss(3, 2, negatives="class").double()
    v, t = torch.ones(7, 2, dtype=torch.float64), torch.ones(7, 3, dtype=torch.float64)
    chance = contrast_chance(labels, "instance", "class")
    assert chance.item() == pytest.approx((4 * math.log(4) + 2 * math.log(2)) / 6, rel=1e-12)
    assert module(v, t, labels).item() == pytest.approx(chance.item(), rel=1e-12)
    lonely = torch.tensor([0, 1, 2])
    assert module(v[:3], t[:3], lonely).item() == 0 and contrast_chance(lonely, "instance", "class").item() == 0


def test_negatives_within_the_class_need_labels_and_instance_positives() -> None:
    from vlmkd.errors import InputError

    with pytest.raises(InputError, match="leaves no negative"):
        VlmkdContrastiveLoss(3, 2, positives="class", negatives="class")
    with pytest.raises(InputError, match="negatives must be one of batch, class"):
        VlmkdContrastiveLoss(3, 2, negatives="other")
    with pytest.raises(InputError, match="labels are required"):
        VlmkdContrastiveLoss(3, 2, negatives="class")(torch.ones(4, 2), torch.ones(4, 3))
