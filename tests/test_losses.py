"""Each loss term against its textbook formula written out with plain loops in float64."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkd.losses import TaskLoss, VlmkdObjective, logit_kd
from vlmkd.ops import contrastive_ref

COUNTS = torch.tensor([120.0, 40.0, 7.0, 1.0])


def _batch(seed: int = 0, batch: int = 6, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(classes, (batch,), generator=generator)
    return logits, labels


def _nll(scores: list[float], target: int) -> float:
    return -math.log(math.exp(scores[target]) / sum(math.exp(s) for s in scores))


def _mean_nll(logits: torch.Tensor, labels: torch.Tensor, offset: list[float]) -> float:
    rows = logits.tolist()
    return sum(
        _nll([z + o for z, o in zip(row, offset, strict=True)], int(y)) for row, y in zip(rows, labels, strict=True)
    ) / len(rows)


def test_cross_entropy_matches_negative_log_softmax() -> None:
    logits, labels = _batch()
    expected = _mean_nll(logits, labels, [0.0] * 4)
    assert TaskLoss("ce")(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_softmax_weights_each_class_by_its_count() -> None:
    logits, labels = _batch(1)
    # -log( n_y e^{z_y} / sum_j n_j e^{z_j} )
    expected = sum(
        -math.log(
            COUNTS[y] * math.exp(row[y]) / sum(n * math.exp(z) for n, z in zip(COUNTS.tolist(), row, strict=True))
        )
        for row, y in zip(logits.tolist(), labels.tolist(), strict=True)
    ) / len(labels)
    assert TaskLoss("balanced_softmax", COUNTS)(logits, labels).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjustment_adds_tau_log_prior(tau: float) -> None:
    logits, labels = _batch(2)
    prior = (COUNTS / COUNTS.sum()).tolist()
    expected = _mean_nll(logits, labels, [tau * math.log(p) for p in prior])
    assert TaskLoss("logit_adjust", COUNTS, tau=tau)(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_logit_adjustment_at_tau_one_equals_balanced_softmax() -> None:
    logits, labels = _batch(3)
    balanced = TaskLoss("balanced_softmax", COUNTS)(logits, labels)
    adjusted = TaskLoss("logit_adjust", COUNTS, tau=1.0)(logits, labels)
    torch.testing.assert_close(balanced, adjusted)


def test_long_tail_losses_need_counts() -> None:
    with pytest.raises(ValueError, match="class counts"):
        TaskLoss("balanced_softmax")


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_kd_is_t_squared_kl_from_teacher_to_student(temperature: float) -> None:
    student, _ = _batch(4)
    teacher, _ = _batch(5)
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        s_z = sum(math.exp(z / temperature) for z in s_row)
        t_z = sum(math.exp(z / temperature) for z in t_row)
        p_s = [math.exp(z / temperature) / s_z for z in s_row]
        p_t = [math.exp(z / temperature) / t_z for z in t_row]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = temperature**2 * total / len(student)
    assert logit_kd(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_logit_kd_sends_no_gradient_to_the_teacher() -> None:
    student, _ = _batch(6)
    teacher = _batch(7)[0].requires_grad_()
    logit_kd(student.requires_grad_(), teacher, 2.0).backward()
    assert teacher.grad is None and student.grad is not None


def _cosines(v: torch.Tensor, u: torch.Tensor) -> list[list[float]]:
    n = v.shape[0]
    return [[float(v[i] @ u[j] / (v[i].norm() * u[j].norm())) for j in range(n)] for i in range(n)]


def _infonce_loops(v: torch.Tensor, u: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE with instance positives, written as loops over cosine similarities."""
    n = v.shape[0]
    cos = _cosines(v, u)
    rows = sum(_nll([scale * cos[i][j] for j in range(n)], i) for i in range(n)) / n
    cols = sum(_nll([scale * cos[i][j] for i in range(n)], j) for j in range(n)) / n
    return 0.5 * (rows + cols)


def _multi_positive_loops(v: torch.Tensor, u: torch.Tensor, labels: list[int], scale: float) -> float:
    """Symmetric multi-positive InfoNCE: each anchor's -log(sum over same-label pairs / sum over all), as loops."""
    n = v.shape[0]
    cos = _cosines(v, u)

    def anchor(similar: list[float], own: int) -> float:
        positives = sum(math.exp(scale * c) for c, y in zip(similar, labels, strict=True) if y == labels[own])
        return -math.log(positives / sum(math.exp(scale * c) for c in similar))

    rows = sum(anchor([cos[i][j] for j in range(n)], i) for i in range(n)) / n
    cols = sum(anchor([cos[i][j] for i in range(n)], j) for j in range(n)) / n
    return 0.5 * (rows + cols)


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), math.log(100.0) + 0.5])
def test_contrastive_ref_with_instance_positives_matches_the_loops(logit_scale: float) -> None:
    generator = torch.Generator().manual_seed(3)
    v, t = torch.randn(7, 5, generator=generator, dtype=torch.float64), torch.randn(7, 3, generator=generator)
    weight, bias = torch.randn(5, 3, dtype=torch.float64, generator=generator), torch.randn(5, dtype=torch.float64)
    u = t.double() @ weight.T + bias
    got = contrastive_ref(v, t, weight, bias, torch.tensor(logit_scale, dtype=torch.float64))
    assert got.item() == pytest.approx(_infonce_loops(v, u, math.exp(min(logit_scale, math.log(100.0)))), rel=1e-12)


@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 0, 3], [4, 4, 4, 4, 4, 4, 4], [0, 1, 2, 3, 4, 5, 6]])
def test_contrastive_ref_with_class_positives_matches_the_loops(labels: list[int]) -> None:
    generator = torch.Generator().manual_seed(4)
    v, t = torch.randn(7, 5, generator=generator, dtype=torch.float64), torch.randn(7, 3, generator=generator)
    weight, bias = torch.randn(5, 3, dtype=torch.float64, generator=generator), torch.randn(5, dtype=torch.float64)
    u = t.double() @ weight.T + bias
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    got = contrastive_ref(v, t, weight, bias, scale, torch.tensor(labels), positives="class")
    expected = _multi_positive_loops(v, u, labels, 1 / 0.07)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if len(set(labels)) == len(labels):  # every label distinct: the instance loss
        assert got.item() == pytest.approx(_infonce_loops(v, u, 1 / 0.07), rel=1e-12)


class _ReferenceContrastive(torch.nn.Module):
    """The adaptor and temperature around `contrastive_ref`, as the trainer's contrastive module provides."""

    def __init__(self, text_dim: int, image_dim: int) -> None:
        super().__init__()
        self.adaptor = torch.nn.Linear(text_dim, image_dim).double()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))

    def forward(self, v: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_ref(v.double(), t, self.adaptor.weight, self.adaptor.bias, self.logit_scale, labels)


def test_objective_sums_weighted_parts_and_reports_each() -> None:
    torch.manual_seed(0)
    logits, labels = _batch(8)
    teacher, _ = _batch(9)
    features = torch.randn(6, 5, dtype=torch.float64)
    text = torch.randn(6, 3, dtype=torch.float64)
    contrastive = _ReferenceContrastive(3, 5)
    objective = VlmkdObjective(
        TaskLoss("balanced_softmax", COUNTS), contrastive, vlmkd_weight=0.7, kd_weight=0.3, kd_temperature=2.0
    )
    parts = objective(logits, features, labels, text=text, teacher_logits=teacher)
    u = contrastive.adaptor(text).detach()
    expected_vlmkd = _infonce_loops(features, u, 1 / 0.07)
    assert parts["vlmkd_loss"].item() == pytest.approx(expected_vlmkd, rel=1e-5)
    assert parts["task_loss"].item() == pytest.approx(TaskLoss("balanced_softmax", COUNTS)(logits, labels).item())
    assert parts["kd_loss"].item() == pytest.approx(logit_kd(logits, teacher, 2.0).item())
    expected = parts["task_loss"] + 0.7 * parts["vlmkd_loss"] + 0.3 * parts["kd_loss"]
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_objective_without_text_or_teacher_is_the_task_loss() -> None:
    logits, labels = _batch(10)
    parts = VlmkdObjective(TaskLoss("ce"))(logits, torch.zeros(6, 5), labels)
    assert parts["vlmkd_loss"].item() == 0.0 and parts["kd_loss"].item() == 0.0
    torch.testing.assert_close(parts["loss"], parts["task_loss"])


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 3, 3]])
def test_contrast_chance_is_the_loss_when_every_similarity_is_equal(labels: list[int]) -> None:
    from vlmkd.losses.objective import contrast_chance

    y = torch.tensor(labels)
    v, t = torch.ones(6, 4, dtype=torch.float64), torch.ones(6, 3, dtype=torch.float64)  # all pairs alike
    weight, bias = torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for positives in ("instance", "class"):
        equal = contrastive_ref(v, t, weight, bias, torch.tensor(2.0, dtype=torch.float64), y, positives)
        assert contrast_chance(y, positives).item() == pytest.approx(equal.item(), rel=1e-6)
    assert contrast_chance(y, "instance").item() == pytest.approx(math.log(6))


def test_objective_reports_the_chance_level_of_the_text_term() -> None:
    logits, labels = _batch(11)
    objective = VlmkdObjective(TaskLoss("ce"), _ReferenceContrastive(3, 5), vlmkd_weight=1.0)
    parts = objective(logits, torch.randn(6, 5, dtype=torch.float64), labels, text=torch.randn(6, 3).double())
    assert parts["vlmkd_chance"].item() == pytest.approx(math.log(6))
    assert VlmkdObjective(TaskLoss("ce"))(logits, torch.zeros(6, 5), labels)["vlmkd_chance"].item() == 0.0


def test_objective_reports_the_within_class_chance_level_for_negatives_within_the_class() -> None:
    from vlmkd.losses import VlmkdContrastiveLoss

    logits, labels = _batch(12)
    contrastive = VlmkdContrastiveLoss(3, 5, negatives="class")  # the objective feeds it float32
    parts = VlmkdObjective(TaskLoss("ce"), contrastive, vlmkd_weight=1.0)(
        logits, torch.randn(6, 5, dtype=torch.float64), labels, text=torch.randn(6, 3).double()
    )
    counts = torch.bincount(labels)[labels].double()
    expected = counts[counts >= 2].log().mean().item() if (counts >= 2).any() else 0.0
    assert parts["vlmkd_chance"].item() == pytest.approx(expected)
