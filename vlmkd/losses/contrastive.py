"""The VLM-KD contrastive loss as a module: `VlmkdContrastiveLoss` owns the text adaptor, the learnable
temperature and the image-side options, and calls the fused op `vlmkd.ops.vlmkd_contrastive_loss`."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmkd.errors import InputError
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
    """VLM-KD loss with its text adaptor and learnable temperature: forward(v, t, labels) -> loss.

    The adaptor maps text features (Dt) to the image-feature width (Dv): a Linear (fused path), or with
    `hidden_dim` a 2-layer MLP (Linear, GELU, Linear), whose first layer needs gradients through t, so that
    variant runs on the reference backend. Its (last) bias starts at zero; `adaptor_bias=False` drops it, so
    that with centred text features captions that are all the same give an exactly constant loss and no
    gradient. `negatives="class"` contrasts each image only with the captions of its own class (one InfoNCE per
    class of the batch, averaged over their images; classes with one image in the batch add nothing), so the
    term tells apart images of one class and never pulls or pushes two classes. `logit_scale` starts at
    log(1 / init_temperature). On the image side, `image_center` subtracts
    the batch mean of v (a running mean in eval mode), `image_standardize` standardises v per dimension
    instead (BatchNorm1d without affine), and `image_projection` adds a learnt Linear (Dv -> Dv, initialised
    to the identity).
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        *,
        positives: str = "instance",
        negatives: str = "batch",
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        hidden_dim: int | None = None,
        image_projection: bool = False,
        image_standardize: bool = False,
        image_center: bool = False,
        adaptor_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise InputError(f"positives must be {' or '.join(map(repr, POSITIVES))}, got {positives!r}")
        if negatives not in NEGATIVES:
            raise InputError(f"negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        if positives == "class" and negatives == "class":
            raise InputError("positives='class' with negatives='class' leaves no negative: every pair is positive")
        if not init_temperature > 0:
            raise InputError(f"init_temperature must be > 0, got {init_temperature}")
        if hidden_dim is None:
            self.adaptor: nn.Module = nn.Linear(text_dim, image_dim, bias=adaptor_bias)
        else:
            self.adaptor = nn.Sequential(
                nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, image_dim, bias=adaptor_bias)
            )
        last = self.adaptor if hidden_dim is None else self.adaptor[-1]
        if last.bias is not None:  # a random bias would be a direction shared by every caption: start without one
            nn.init.zeros_(last.bias)
        self.image_projection: nn.Module | None = None
        if image_projection:
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
        logit_scale = torch.tensor(math.log(1.0 / init_temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)
        self.positives = positives
        self.negatives = negatives
        self.backend = backend

    def forward(self, v: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Loss between image features v (B, Dv) and text features t (B, Dt); labels for positives="class" and
        negatives="class"."""
        if self.image_norm is not None:
            v = self.image_norm(v)
        if self.image_projection is not None:
            v = self.image_projection(v)
        if isinstance(self.adaptor, nn.Linear):
            last, backend = self.adaptor, self.backend
        else:
            last, t, backend = self.adaptor[-1], self.adaptor[:-1](t), REFERENCE
        if self.negatives == "class":
            return self._within_classes(v, t, last, labels, backend)
        return vlmkd_contrastive_loss(
            v, t, last.weight, last.bias, self.logit_scale, labels, self.positives, backend=backend
        )

    def _within_classes(
        self, v: torch.Tensor, t: torch.Tensor, last: nn.Linear, labels: torch.Tensor | None, backend: str | None
    ) -> torch.Tensor:
        """The mean over the batch's images (in classes of two or more) of their class's own InfoNCE."""
        if labels is None:
            raise InputError("labels are required when negatives='class'")
        total, count = v.new_zeros(()), 0
        for label in torch.unique(labels):
            members = torch.nonzero(labels == label).squeeze(1)
            if members.numel() < 2:
                continue
            loss = vlmkd_contrastive_loss(
                v[members], t[members], last.weight, last.bias, self.logit_scale, backend=backend
            )
            total, count = total + members.numel() * loss, count + members.numel()
        return total / max(count, 1)

    def embed_images(self, v: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, Dv) as the loss compares them (eval mode: running statistics)."""
        if self.image_norm is not None:
            v = self.image_norm(v)
        if self.image_projection is not None:
            v = self.image_projection(v)
        return torch.nn.functional.normalize(v, dim=1)

    def embed_text(self, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm adapted text embeddings (B, Dv) of (conditioned) text features t (B, Dt)."""
        return torch.nn.functional.normalize(self.adaptor(t), dim=1)

    def extra_repr(self) -> str:
        return f"positives={self.positives!r}, negatives={self.negatives!r}, backend={self.backend!r}"
