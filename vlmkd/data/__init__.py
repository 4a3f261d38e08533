"""Datasets: list files, ImageFolder directories, long-tail cuts, the embedded demo, and loaders."""

from vlmkd.data.dataset import ImageList, Sample, load_image_list
from vlmkd.data.images import load_rgb

__all__ = ["ImageList", "Sample", "load_image_list", "load_rgb"]
