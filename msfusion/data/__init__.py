"""Datasets and transforms of every task, registered by name.

Segmentation: synthetic shapes, a generic folder format and the public
benchmarks (ADE20K, Cityscapes, Pascal VOC, COCO-Stuff, Pascal Context,
iSAID), returning the sample contract of ``msfusion.data.segmentation``.
Detection (``msfusion.data.detection``: shapes, COCO, VOC, VisDrone) and
panoptic (``msfusion.data.coco_panoptic``: shapes, COCO panoptic) datasets
share their base (``msfusion.data.base_dataset``). Every dataset and
pipeline registers with ``msfusion.data.registry`` under its task, and
``build_dataset(cfg, task=...)`` builds a recipe's ``{type: ..., ...}``.
"""

from msfusion.data.ade20k import ADE20KDataset
from msfusion.data.base_dataset import BaseDataset, boxes_from_masks
from msfusion.data.build import DATASET_TYPES, build_dataset, build_detection_dataset, build_panoptic_dataset
from msfusion.data.cityscapes import CityscapesDataset
from msfusion.data.coco_stuff import COCOStuffDataset
from msfusion.data.folder import FolderDataset
from msfusion.data.isaid import ISAIDDataset
from msfusion.data.label_maps import IGNORE_INDEX, InvalidSampleError
from msfusion.data.pascal_context import PascalContextDataset
from msfusion.data.registry import (
    build_transforms,
    dataset_types,
    register_dataset,
    register_transform,
    transform_types,
)
from msfusion.data.segmentation import (
    FileSegmentationDataset,
    PublicSegmentationDataset,
    RawSample,
    SamplePaths,
    SegmentationDataset,
    collate_segmentation,
)
from msfusion.data.segmentation_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    ToTensor,
    build_eval_transforms,
    build_train_transforms,
    denormalize,
)
from msfusion.data.shapes import SHAPE_CLASSES, ShapesDataset
from msfusion.data.voc import VOCSegmentationDataset

__all__ = [
    "BaseDataset",
    "ADE20KDataset",
    "COCOStuffDataset",
    "CityscapesDataset",
    "Compose",
    "DATASET_TYPES",
    "FileSegmentationDataset",
    "FolderDataset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISAIDDataset",
    "InvalidSampleError",
    "Normalize",
    "Pad",
    "PascalContextDataset",
    "PhotoMetricDistortion",
    "PublicSegmentationDataset",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "RawSample",
    "Resize",
    "SHAPE_CLASSES",
    "SamplePaths",
    "SegmentationDataset",
    "ShapesDataset",
    "ToTensor",
    "VOCSegmentationDataset",
    "boxes_from_masks",
    "build_dataset",
    "build_detection_dataset",
    "build_panoptic_dataset",
    "build_eval_transforms",
    "build_train_transforms",
    "build_transforms",
    "collate_segmentation",
    "dataset_types",
    "denormalize",
    "register_dataset",
    "register_transform",
    "transform_types",
]
