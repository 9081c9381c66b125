"""Folder data sets, transform presets and robust image reading (paper section V).

Layout on disk: ``ROOT/{train,val,test}/<ClassName>/*.jpg``. Known classes are the subfolders of
``train/`` sorted by name; ``Other`` (unknown chains) appears in val and test only and gets the label
``len(known_classes)``.

Bad files never crash deep inside a DataLoader worker: ``make_loader`` catches ``ImageReadError`` in
the worker, ships the failure to the main process as data, and there either raises one clear
``ImageReadError`` naming the file (``on_error="raise"``) or records it in ``loader.failures`` and
logs it (``on_error="skip"``).

images.py     reading photos robustly, transform presets, ImageNet statistics
folders.py    known classes and ``ReceiptFolder`` over ``ROOT/<split>/<Class>/*``
manifest.py   the manifest (per-photo parameters) and its join with a list of photos
loaders.py    deterministic loaders (``make_loader``) that report bad files
"""
from .images import (IMAGENET_MEAN, IMAGENET_STD, IMAGE_EXTENSIONS, ImageReadError, Jitter,
                     MAX_PIXELS, denormalize, eval_transform, is_image_file, read_image, to_rgb,
                     train_transform)
from .folders import PathDataset, ReceiptFolder, as_known_classes, class_names, image_files, known_classes
from .manifest import distortion_bins, photo_table, read_manifest, slice_rates
from .loaders import Failed, ReceiptLoader, SeededView, collate_skip_failed, make_loader

__all__ = [
    "Failed", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ImageReadError", "Jitter", "MAX_PIXELS",
    "PathDataset", "ReceiptFolder", "ReceiptLoader", "SeededView", "as_known_classes", "class_names", "collate_skip_failed",
    "denormalize", "distortion_bins", "eval_transform", "image_files", "is_image_file", "known_classes",
    "make_loader", "photo_table", "read_image", "read_manifest", "slice_rates", "to_rgb", "train_transform"
]
