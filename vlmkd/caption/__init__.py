"""Stage 1: caption every training image with a VLM, once per prompt, into a sharded Parquet store."""

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.caption.tiny_models import build_tiny_blip, build_tiny_llava

__all__ = ["CaptionStore", "build_tiny_blip", "build_tiny_llava", "make_manifest", "prompt_set_record"]
