"""Datasets: list files, ImageFolder directories, long-tail cuts, the embedded demo, and loaders."""

from vlmkd.data.dataset import ImageList, Sample, load_image_list
from vlmkd.data.demo import DemoDataset, make_demo_dataset
from vlmkd.data.images import load_rgb
from vlmkd.data.loaders import IMAGENET_MEAN, IMAGENET_STD, LOADERS, ImageBatches, build_loader
from vlmkd.data.longtail import longtail_counts, make_longtail
from vlmkd.data.splits import class_splits

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOADERS",
    "DemoDataset",
    "ImageBatches",
    "ImageList",
    "Sample",
    "build_loader",
    "class_splits",
    "load_image_list",
    "load_rgb",
    "longtail_counts",
    "make_demo_dataset",
    "make_longtail",
]
