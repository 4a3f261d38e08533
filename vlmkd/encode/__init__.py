"""Caption encoding: text encoders, the fp16 feature store, and the per-batch feature lookup for training."""

from vlmkd.encode.loader import CaptionFeatures
from vlmkd.encode.runner import encode_captions
from vlmkd.encode.store import FeatureStore
from vlmkd.encode.text_encoder import DEFAULT_ENCODER, TextEncoder, load_text_encoder

__all__ = ["DEFAULT_ENCODER", "CaptionFeatures", "FeatureStore", "TextEncoder", "encode_captions", "load_text_encoder"]
