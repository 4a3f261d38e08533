"""The VLM-KD term's settings and their defaults, in one place: `vlmkd-train` and `VlmkdContrastiveLoss` both
take them from here, so a loss module built by hand is the one the trainer trains (docs/training.md measures
each choice)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ContrastiveSettings:
    """Every setting of the VLM-KD loss module, named as `vlmkd-train`'s flags (`--soft-targets` ...)."""

    positives: str = "instance"
    negatives: str = "batch"
    temperature: float = 0.5  # fixed: CLIP's 0.07 cost the positive control's classifier 30 points
    learn_temperature: bool = False  # learnt at the backbone's lr it ran away (0.26-171) and stayed at chance
    adaptor_hidden: int | None = None  # 2-layer MLP text adaptor of this width (None: linear)
    adaptor_bias: bool = False  # with centred text, identical captions then give no gradient at all
    image_center: bool = True  # subtract the batch mean of the image features before the contrast
    image_standardize: bool = False  # standardise them per dimension instead (costs the classifier 20-40 points)
    image_projection: bool = True  # a learnt map of the image features before the contrast
    projection_hidden: int | None = None  # that map as a 2-layer MLP head of this width (None: linear)
    soft_targets: float | None = None  # targets softmax(caption cosine / this) instead of one positive per image
    contrast_balance: str = "none"  # weight each anchor by its class's training count ** -1/2 or -1
    contrast_min_count: int = 0  # leave images of classes with fewer training images out of the contrast

    def kwargs(self) -> dict[str, object]:
        """The settings as `VlmkdContrastiveLoss` keyword arguments."""
        return asdict(self)


CONTRASTIVE_DEFAULTS = ContrastiveSettings()
