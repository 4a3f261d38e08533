"""Image classifiers trained from scratch: a feature trunk plus a linear head."""

from vlmkd.models.classifier import Classifier
from vlmkd.models.zoo import BACKBONES, ModelSpec, build_model

__all__ = ["BACKBONES", "Classifier", "ModelSpec", "build_model"]
