"""Datasets and transforms: synthetic shapes, a generic folder format, and the
public benchmarks (ADE20K, Cityscapes, Pascal VOC, COCO-Stuff, Pascal Context,
iSAID), all returning the sample contract of ``msfusion.data.segmentation``."""

from msfusion.data.ade20k import ADE20KDataset
from msfusion.data.build import (
    DATASET_TYPES,
    build_dataset,
    build_transforms,
    collate_segmentation,
)
from msfusion.data.cityscapes import CityscapesDataset
from msfusion.data.coco_stuff import COCOStuffDataset
from msfusion.data.folder import FolderDataset
from msfusion.data.isaid import ISAIDDataset
from msfusion.data.label_maps import IGNORE_INDEX, InvalidSampleError
from msfusion.data.pascal_context import PascalContextDataset
from msfusion.data.segmentation import (
    FileSegmentationDataset,
    PublicSegmentationDataset,
    RawSample,
    SamplePaths,
    SegmentationDataset,
    boxes_from_masks,
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
    "build_eval_transforms",
    "build_train_transforms",
    "build_transforms",
    "collate_segmentation",
    "denormalize",
]
