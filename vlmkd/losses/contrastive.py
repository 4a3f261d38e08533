"""The VLM-KD contrastive loss as a module: `VlmkdContrastiveLoss` owns the text adaptor, the temperature, the
image-side options and the targets, and calls the fused op `vlmkd.ops.vlmkd_contrastive_loss` (or, with soft
targets or class-balanced anchors, the plain-PyTorch contrast of `vlmkd.losses.contrast_targets`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmkd.errors import InputError
from vlmkd.losses.contrast_targets import BALANCES, class_anchor_weights, soft_target_matrix, weighted_contrast
from vlmkd.losses.contrastive_settings import CONTRASTIVE_DEFAULTS as DEFAULTS
from vlmkd.ops.contrastive import REFERENCE, vlmkd_contrastive_loss
from vlmkd.ops.contrastive_reference import MAX_LOGIT_SCALE, POSITIVES

NEGATIVES = ("batch", "class")  # every other caption of the batch, or only those of the same class


def temperature(logit_scale: float) -> float:
    """The temperature a logit scale gives the loss: exp(-scale), the scale clamped as the op clamps it."""
    return math.exp(-min(float(logit_scale), MAX_LOGIT_SCALE))


class BatchCentering(nn.Module):
    """v minus its batch mean (training; a running mean in eval mode): what every image shares is removed.

    Unlike standardising, it never divides by a dimension's spread, so the gradient reaching the encoder is
    a projection of the loss's gradient, never an amplified one.
    """

    def __init__(self, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return v - self.running_mean.to(v.dtype)
        mean = v.mean(dim=0)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        return v - mean


class VlmkdContrastiveLoss(nn.Module):
    """VLM-KD loss with its text adaptor and temperature: forward(v, t, labels) -> loss.

    Defaults are `vlmkd-train`'s (`vlmkd.losses.contrastive_settings.CONTRASTIVE_DEFAULTS`). The adaptor maps
    text features (Dt) to the image-feature width (Dv): a Linear (fused path), or with `adaptor_hidden` a 2-layer
    MLP (Linear, GELU, Linear), whose first layer needs gradients through t, so that variant runs on the
    reference backend. Its (last) bias starts at zero; `adaptor_bias=False` drops it, so that with centred text
    features captions that are all the same give an exactly constant loss and no gradient. `negatives="class"`
    contrasts each image only with the captions of its own class (one InfoNCE per class of the batch, averaged
    over their images; classes with one image in the batch add nothing). `logit_scale` starts at
    log(1 / temperature), learnt with `learn_temperature`. On the image side, `image_center` subtracts the batch
    mean of v (a running mean in eval mode), `image_standardize` standardises v per dimension instead
    (BatchNorm1d without affine), and `image_projection` adds a learnt Linear (Dv -> Dv, initialised to the
    identity), or with `projection_hidden` a 2-layer MLP head (Linear, ReLU, Linear) that keeps the contrast's
    geometry off the classifier's features. `soft_targets` (a temperature) and `contrast_balance` with
    `class_counts` (training images per class) are described in `vlmkd.losses.contrast_targets`; with either,
    the contrast runs its plain-PyTorch math instead of a fused backend.
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        *,
        positives: str = DEFAULTS.positives,
        negatives: str = DEFAULTS.negatives,
        temperature: float = DEFAULTS.temperature,
        learn_temperature: bool = DEFAULTS.learn_temperature,
        adaptor_hidden: int | None = DEFAULTS.adaptor_hidden,
        adaptor_bias: bool = DEFAULTS.adaptor_bias,
        image_center: bool = DEFAULTS.image_center,
        image_standardize: bool = DEFAULTS.image_standardize,
        image_projection: bool = DEFAULTS.image_projection,
        projection_hidden: int | None = DEFAULTS.projection_hidden,
        soft_targets: float | None = DEFAULTS.soft_targets,
        contrast_balance: str = DEFAULTS.contrast_balance,
        contrast_min_count: int = DEFAULTS.contrast_min_count,
        class_counts: torch.Tensor | list[int] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_settings(positives, negatives, temperature, soft_targets, contrast_balance, class_counts)
        if contrast_min_count < 0:
            raise InputError(f"contrast_min_count must be >= 0, got {contrast_min_count}")
        if contrast_min_count > 0 and class_counts is None:
            raise InputError(f"contrast_min_count={contrast_min_count} needs class_counts (training images per class)")
        _check_head(image_projection, projection_hidden)
        if adaptor_hidden is None:
            self.adaptor: nn.Module = nn.Linear(text_dim, image_dim, bias=adaptor_bias)
        else:
            self.adaptor = nn.Sequential(
                nn.Linear(text_dim, adaptor_hidden), nn.GELU(), nn.Linear(adaptor_hidden, image_dim, bias=adaptor_bias)
            )
        last = self.adaptor if adaptor_hidden is None else self.adaptor[-1]
        if last.bias is not None:  # a random bias would be a direction shared by every caption: start without one
            nn.init.zeros_(last.bias)
        self.image_projection: nn.Module | None = None
        if image_projection and projection_hidden is not None:
            self.image_projection = nn.Sequential(
                nn.Linear(image_dim, projection_hidden), nn.ReLU(), nn.Linear(projection_hidden, image_dim)
            )
        elif image_projection:
            self.image_projection = nn.Linear(image_dim, image_dim)
            with torch.no_grad():
                self.image_projection.weight.copy_(torch.eye(image_dim))
                self.image_projection.bias.zero_()
        # Pooled ReLU features are all positive and nearly parallel; standardising each dimension over the
        # batch (running statistics in eval mode) makes their differences what the contrast sees.
        # (Standardising also divides by each dimension's spread, which amplifies the gradient into nearly
        # constant dimensions: measured, it costs the classifier 20-40 points; centring does not.)
        self.image_norm: nn.Module | None = None
        if image_standardize:
            self.image_norm = nn.BatchNorm1d(image_dim, affine=False)
        elif image_center:
            self.image_norm = BatchCentering(image_dim)
        logit_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)
        self.class_counts: torch.Tensor | None
        needs_counts = contrast_balance != "none" or contrast_min_count > 0
        counts = torch.as_tensor(class_counts, dtype=torch.float64) if needs_counts else None
        self.register_buffer("class_counts", counts, persistent=False)
        self.positives = positives
        self.negatives = negatives
        self.soft_targets = soft_targets
        self.contrast_balance = contrast_balance
        self.contrast_min_count = contrast_min_count
        self.backend = backend

    def forward(self, v: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Loss between image features v (B, Dv) and text features t (B, Dt); labels for positives="class",
        negatives="class" and contrast_balance."""
        v = self._image_side(v)
        kept = self.contrast_mask(labels)
        if kept is not None:
            if int(kept.sum()) < 2:  # nothing to contrast: an exact zero that keeps the graph
                return (v * 0).sum() + (t * 0).sum()
            v, t, labels = v[kept], t[kept], labels[kept]
        text = t
        if isinstance(self.adaptor, nn.Linear):
            last, backend = self.adaptor, self.backend
        else:
            last, t, backend = self.adaptor[-1], self.adaptor[:-1](t), REFERENCE
        if labels is None and (
            self.positives == "class" or self.negatives == "class" or self.contrast_balance != "none"
        ):
            raise InputError(
                f"labels are required with positives={self.positives!r}, negatives={self.negatives!r}, "
                f"contrast_balance={self.contrast_balance!r}"
            )
        weights = self.anchor_weights(labels)
        if self.negatives == "class":
            return self._within_classes(v, t, last, labels, backend, weights)
        if weights is None and self.soft_targets is None:
            return vlmkd_contrastive_loss(
                v, t, last.weight, last.bias, self.logit_scale, labels, self.positives, backend=backend
            )
        return weighted_contrast(
            v,
            t,
            last.weight,
            last.bias,
            self.logit_scale,
            targets=None if self.soft_targets is None else soft_target_matrix(text, self.soft_targets),
            positive_mask=labels[:, None] == labels[None, :] if self.positives == "class" else None,
            anchor_weights=weights,
        )

    def contrast_mask(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) True for the images that enter the contrast: those of classes with at least `contrast_min_count`
        training images (None: every image)."""
        if self.contrast_min_count == 0:
            return None
        if labels is None:
            raise InputError(f"labels are required with contrast_min_count={self.contrast_min_count}")
        assert self.class_counts is not None
        return self.class_counts.to(labels.device)[labels] >= self.contrast_min_count

    def anchor_weights(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) class-balance weights of the batch's anchors, mean 1 (None: uniform)."""
        if labels is None or self.class_counts is None:
            return None
        return class_anchor_weights(labels, self.class_counts, self.contrast_balance)

    def _image_side(self, v: torch.Tensor) -> torch.Tensor:
        if self.image_norm is not None:
            v = self.image_norm(v)
        if self.image_projection is not None:
            v = self.image_projection(v)
        return v

    def _within_classes(
        self,
        v: torch.Tensor,
        t: torch.Tensor,
        last: nn.Linear,
        labels: torch.Tensor,
        backend: str | None,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """The mean over the batch's images (in classes of two or more) of their class's own InfoNCE, each image
        weighted by its anchor weight when the contrast is class-balanced."""
        total, count = v.new_zeros(()), v.new_zeros(())
        for label in torch.unique(labels):
            members = torch.nonzero(labels == label).squeeze(1)
            if members.numel() < 2:
                continue
            loss = vlmkd_contrastive_loss(
                v[members], t[members], last.weight, last.bias, self.logit_scale, backend=backend
            )
            mass = members.numel() if weights is None else weights[members].sum().to(v.dtype)
            total, count = total + mass * loss, count + mass
        return total / count.clamp(min=1)

    def embed_images(self, v: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, Dv) as the loss compares them (eval mode: running statistics)."""
        return torch.nn.functional.normalize(self._image_side(v), dim=1)

    def embed_text(self, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm adapted text embeddings (B, Dv) of (conditioned) text features t (B, Dt)."""
        return torch.nn.functional.normalize(self.adaptor(t), dim=1)

    def extra_repr(self) -> str:
        return (
            f"positives={self.positives!r}, negatives={self.negatives!r}, soft_targets={self.soft_targets!r}, "
            f"contrast_balance={self.contrast_balance!r}, contrast_min_count={self.contrast_min_count}, "
            f"backend={self.backend!r}"
        )


def _check_settings(
    positives: str,
    negatives: str,
    temperature: float,
    soft_targets: float | None,
    contrast_balance: str,
    class_counts: torch.Tensor | list[int] | None,
) -> None:
    """Raise InputError for a setting out of its choices or a combination that leaves the contrast undefined."""
    if positives not in POSITIVES:
        raise InputError(f"positives must be {' or '.join(map(repr, POSITIVES))}, got {positives!r}")
    if negatives not in NEGATIVES:
        raise InputError(f"negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    if contrast_balance not in BALANCES:
        raise InputError(f"contrast_balance must be one of {', '.join(BALANCES)}, got {contrast_balance!r}")
    if positives == "class" and negatives == "class":
        raise InputError("positives='class' with negatives='class' leaves no negative: every pair is positive")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    if soft_targets is not None:
        if not soft_targets > 0:
            raise InputError(f"soft_targets (a temperature) must be > 0, got {soft_targets}")
        if positives != "instance" or negatives != "batch":
            raise InputError("soft_targets replace the one-hot targets of positives='instance', negatives='batch' only")
    if contrast_balance != "none" and class_counts is None:
        raise InputError(f"contrast_balance={contrast_balance!r} needs class_counts (training images per class)")


def _check_head(image_projection: bool, projection_hidden: int | None) -> None:
    if projection_hidden is not None and not image_projection:
        raise InputError("projection_hidden makes the image projection an MLP head: it needs image_projection=True")
