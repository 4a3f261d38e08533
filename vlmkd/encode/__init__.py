"""Stage 2: text encoders, the fp16 feature store, and the per-batch feature lookup for training.

The stage itself runs as `vlmkd.encode(...)` (`vlmkd.pipeline`); the names below are imported on first use.
"""

from typing import TYPE_CHECKING

from vlmkd.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(__name__, __file__)
