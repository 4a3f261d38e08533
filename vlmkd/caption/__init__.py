"""Stage 1: caption every training image with a VLM, once per prompt, into a sharded Parquet store.

The stage itself runs as `vlmkd.caption(...)` (`vlmkd.pipeline`); the names below are imported on first use.
"""

from typing import TYPE_CHECKING

from vlmkd.lazy import lazy_exports

if TYPE_CHECKING:
    from vlmkd.caption.config import CaptionConfig
    from vlmkd.caption.engines import CaptionEngine, GenerationSettings, ImageRequest, load_engine
    from vlmkd.caption.prompts import Prompt, PromptSet, load_prompt_set
    from vlmkd.caption.runner import Assignment, CaptionReport, run_captioning
    from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
    from vlmkd.caption.transfer import ImportReport, export_captions, import_captions

__all__ = [
    "Assignment",
    "CaptionConfig",
    "CaptionEngine",
    "CaptionReport",
    "CaptionStore",
    "GenerationSettings",
    "ImageRequest",
    "ImportReport",
    "Prompt",
    "PromptSet",
    "export_captions",
    "import_captions",
    "load_engine",
    "load_prompt_set",
    "make_manifest",
    "prompt_set_record",
    "run_captioning",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
