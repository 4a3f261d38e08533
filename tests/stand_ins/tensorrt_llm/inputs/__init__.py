"""Stand-in for tensorrt_llm/inputs/__init__.py (what vlmkd imports from it)."""

from tensorrt_llm.inputs.utils import default_multimodal_input_loader

__all__ = ["default_multimodal_input_loader"]
