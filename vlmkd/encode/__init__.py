"""Caption encoding: text encoders, the fp16 feature store, and the per-batch feature lookup for training."""

from vlmkd._stage_module import make_callable
from vlmkd.encode.config import EncodeConfig
from vlmkd.encode.loader import CaptionFeatures
from vlmkd.encode.runner import encode_captions, run_encoding
from vlmkd.encode.store import FeatureStore
from vlmkd.encode.text_encoder import DEFAULT_ENCODER, TextEncoder, load_text_encoder

__all__ = [
    "DEFAULT_ENCODER",
    "CaptionFeatures",
    "EncodeConfig",
    "FeatureStore",
    "TextEncoder",
    "encode_captions",
    "load_text_encoder",
    "run_encoding",
]

make_callable(__name__)  # `vlmkd.encode(...)` runs the stage: see vlmkd.api.encode
