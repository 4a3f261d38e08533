"""Stage 1: caption every training image with a VLM, once per prompt, into a sharded Parquet store."""

from vlmkd.caption.engines import CaptionEngine, GenerationSettings, Request, load_engine
from vlmkd.caption.prompts import Prompt, PromptSet, load_prompt_set
from vlmkd.caption.runner import Assignment, CaptionReport, caption_dataset, run_captioning
from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.caption.tiny_models import build_tiny_blip, build_tiny_llava, build_tiny_smolvlm
from vlmkd.caption.transfer import ImportReport, export_captions, import_captions

__all__ = [
    "Assignment",
    "CaptionEngine",
    "CaptionReport",
    "CaptionStore",
    "GenerationSettings",
    "ImportReport",
    "Prompt",
    "PromptSet",
    "Request",
    "build_tiny_blip",
    "build_tiny_llava",
    "build_tiny_smolvlm",
    "caption_dataset",
    "export_captions",
    "import_captions",
    "load_engine",
    "load_prompt_set",
    "make_manifest",
    "prompt_set_record",
    "run_captioning",
]
