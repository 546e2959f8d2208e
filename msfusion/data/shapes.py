"""A synthetic multi-scale "shapes" dataset, generated from a seed (no download).

This is msfusion's embedded default dataset (``msfusion demo``): objects
from a few pixels up to about half the image side, several classes,
occlusion, textured backgrounds, with semantic masks, visible instance masks
and boxes, so that a segmentor (and later a detector) can be trained and
evaluated on CPU in minutes.

Generation of image ``i`` of split ``s``:

- the generator is ``numpy.random.default_rng([seed, split_id(s), i])``, so
  every image is reproducible on its own and the splits never share a
  random stream;
- background: a gradient, soft stripes or smooth blotches between two muted
  colours (saturation <= 0.35), plus pixel noise;
- 3..``max_objects`` objects, each a class from :data:`SHAPE_CLASSES`, with a
  circumscribed diameter drawn log-uniformly from ``min_object_size`` pixels
  to ``max_object_fraction`` of the short image side, a random rotation and
  centre (objects may leave the frame);
- object colour: a saturated hue within +-25 degrees of the class's hue
  (class hues are 60 degrees apart), and a random hue for 5 % of objects;
  with shading and noise, the nearest class hue is right for about 96 % of
  object pixels, so colour is a strong cue and shape decides the rest (a
  tiny U-Net reaches about 0.86 mIoU at 64x64 after 7 CPU-minutes);
  texture is flat with noise, shaded or striped;
- objects are drawn roughly largest first, with jitter in the order so that
  large objects sometimes cover small ones; later objects occlude earlier
  ones and the masks keep only what is visible.

A few milliseconds per 128x128 image on one CPU core (numpy and PIL ImageDraw).

``variant="hard"`` (used by ``msfusion effects``, never by the demo) makes
multi-scale fusion matter; the default images above are unchanged by it:

- colour is independent of the class: every object takes a random hue
  (saturation 0.5-1, still above the background's 0.35), so shape and scale
  decide the class, not colour;
- more and tinier objects: 3..``max_objects`` "parent" objects of 8 pixels to
  ``max_object_fraction`` of the short side, each parent of 16 pixels or more
  with 1-4 same-class "satellites" of 3-7 pixels placed 0.7-1.4 parent
  diameters from its centre, plus 0-2 lone tiny objects of any class;
- context a small receptive field cannot see: a satellite of 3-7 pixels is too
  small for its outline to say its class, but its parent a parent diameter
  away has the same class, so features that fuse a wide context into the
  fine levels can label it and purely local ones must guess.
"""

from __future__ import annotations

import colorsys
import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from msfusion.data.folder import write_classes_yaml, write_folder_sample
from msfusion.data.registry import register_dataset
from msfusion.data.segmentation import RawSample, SegmentationDataset
from msfusion.data.segmentation_transforms import Transform

SHAPE_CLASSES: list[str] = ["background", "circle", "square", "triangle", "star", "cross", "bar"]
_CLASS_HUES = {1: 0.0, 2: 60.0, 3: 120.0, 4: 180.0, 5: 240.0, 6: 300.0}  # degrees
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_HUE_JITTER = 25.0
_RANDOM_HUE_PROB = 0.05
_MIN_OBJECTS = 3
SHAPE_VARIANTS = ("default", "hard")
# The "hard" variant (module doc): satellites and lone tiny objects, in pixels.
_TINY_SIZE = (3.0, 7.0)
_PARENT_MIN_SIZE = 8.0
_SATELLITE_PARENT_MIN = 16.0


def _hsv_to_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    return 255.0 * np.asarray(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value))


SHAPE_PALETTE: list[tuple[int, int, int]] = [(0, 0, 0)] + [
    tuple(int(round(v)) for v in _hsv_to_rgb(_CLASS_HUES[k], 1.0, 1.0)) for k in range(1, len(SHAPE_CLASSES))
]


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _blend(t: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    t = t[..., None].astype(np.float32)
    return first.astype(np.float32) * (1.0 - t) + second.astype(np.float32) * t


def _linear_field(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, stripes: bool) -> np.ndarray:
    """A field in 0..1 over the given pixel coordinates: a gradient or soft stripes."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    projection = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    if stripes:
        period = rng.uniform(4.0, 24.0)
        return 0.5 + 0.5 * np.sin(projection * np.float32(2.0 * np.pi / period))
    low = projection.min()
    return (projection - low) / max(float(projection.max() - low), 1.0)


def _blotch_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random blotches in 0..1: a few random cells upsampled bilinearly."""
    cells = rng.random((int(rng.integers(2, 7)), int(rng.integers(2, 7))), dtype=np.float32)
    return np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR))


def _noise(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    colors = [_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.85)) for _ in range(2)]
    kind = int(rng.integers(3))
    if kind == 2:
        field = _blotch_field(rng, height, width)
    else:
        field = _linear_field(rng, *_grid(height, width), stripes=kind == 1)
    image = _blend(field, *colors)
    return image + _noise(rng, rng.uniform(2.0, 8.0), image.shape)


def _object_texture(
    rng: np.random.Generator, label: int, ys: np.ndarray, xs: np.ndarray, any_hue: bool = False
) -> np.ndarray:
    """Colours ``(P, 3)`` of an object's pixels at coordinates ``ys, xs`` (``any_hue``: class-independent)."""
    if any_hue:
        hue = rng.uniform(0.0, 360.0)
    elif rng.random() < _RANDOM_HUE_PROB:
        hue = rng.uniform(0.0, 360.0)
    else:
        hue = _CLASS_HUES[label] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    color = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    kind = int(rng.integers(3))
    if kind == 0:  # flat with noise
        return color.astype(np.float32) + _noise(rng, 5.0, (len(ys), 3))
    field = _linear_field(rng, ys, xs, stripes=kind == 2)  # shaded or striped
    return _blend(field, color, color * rng.uniform(0.6, 0.85))


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    cos, sin = np.cos(angle), np.sin(angle)
    x = points[:, 0] * cos - points[:, 1] * sin + cx
    y = points[:, 0] * sin + points[:, 1] * cos + cy
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _draw_shape(
    draw: ImageDraw.ImageDraw, label: int, cx: float, cy: float, radius: float, angle: float,
    rng: np.random.Generator,
) -> None:  # fmt: skip
    """Fill one shape of circumradius ``radius`` with value 1."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        return
    if name in ("square", "triangle", "star"):
        corners = {"square": 4, "triangle": 3, "star": 10}[name]
        steps = np.arange(corners) * 2.0 * np.pi / corners
        radii = np.full(corners, radius)
        if name == "star":
            radii[1::2] *= 0.45
        points = np.stack([radii * np.cos(steps), radii * np.sin(steps)], axis=1)
    elif name == "cross":
        a, r = max(0.28 * radius, 1.0), radius
        points = np.array([(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
                           (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)])  # fmt: skip
    else:  # bar: a thin rectangle, at least 2 px wide
        half_width = max(radius * rng.uniform(0.08, 0.2), 1.0)
        points = np.array([(-radius, -half_width), (radius, -half_width),
                           (radius, half_width), (-radius, half_width)])  # fmt: skip
    draw.polygon(_rotate(points, angle, cx, cy), fill=1)


def render_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int = 8,
    min_object_size: float = 4.0,
    max_object_fraction: float = 0.6,
    variant: str = "default",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render one shapes image.

    Args:
        rng: Source of all randomness.
        height: Image height.
        width: Image width.
        max_objects: Most objects drawn (at least 3 are).
        min_object_size: Smallest circumscribed diameter, in pixels.
        max_object_fraction: Largest diameter as a fraction of the short side.
        variant: ``"default"`` or ``"hard"`` (module doc); ``min_object_size``
            applies to the default variant only.

    Returns:
        image ``(H, W, 3)`` uint8, semantic mask ``(H, W)`` uint8 (0 =
        background), visible instance masks ``(N, H, W)`` bool and their
        labels ``(N,)`` int64 (1..K-1), in drawing order.
    """
    if variant not in SHAPE_VARIANTS:
        raise ValueError(f"shapes variant must be one of {SHAPE_VARIANTS}, got {variant!r}")
    image = _background(rng, height, width)
    largest = max(max_object_fraction * min(height, width), min_object_size)
    if variant == "hard":
        objects = _hard_layout(rng, height, width, max_objects, max(largest, _PARENT_MIN_SIZE))
    else:
        count = int(rng.integers(_MIN_OBJECTS, max(max_objects, _MIN_OBJECTS) + 1))
        sizes = np.exp(rng.uniform(np.log(min_object_size), np.log(largest), count))
        order = np.argsort(-(np.log(sizes) + rng.normal(0.0, 0.5, count)))
        labels = rng.integers(1, len(SHAPE_CLASSES), count)
        # Centres are drawn while drawing (below), in this order: the default images stay as they were.
        objects = [(int(labels[i]), float(sizes[i]), None) for i in order]
    owner = np.full((height, width), -1, dtype=np.int16)
    for slot, (label, size, centre) in enumerate(objects):
        canvas = Image.new("L", (width, height), 0)
        cx, cy = centre if centre is not None else (rng.uniform(0, width), rng.uniform(0, height))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        _draw_shape(ImageDraw.Draw(canvas), label, cx, cy, size / 2, angle, rng)
        ys, xs = np.nonzero(np.asarray(canvas))
        if len(ys) == 0:  # a hard-variant object too thin to cover a pixel (centres are always inside)
            continue
        owner[ys, xs] = slot
        image[ys, xs] = _object_texture(rng, label, ys.astype(np.float32), xs.astype(np.float32), variant == "hard")
    image += _noise(rng, 3.0, image.shape)
    count = len(objects)
    drawn_labels = np.array([label for label, _, _ in objects], dtype=np.int64)
    visible = [slot for slot in range(count) if (owner == slot).any()]
    instance_masks = np.zeros((len(visible), height, width), dtype=bool)
    for row, slot in enumerate(visible):
        instance_masks[row] = owner == slot
    mask = np.where(owner >= 0, drawn_labels[np.maximum(owner, 0)], 0).astype(np.uint8)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, mask, instance_masks, drawn_labels[visible].astype(np.int64)


def _hard_layout(
    rng: np.random.Generator, height: int, width: int, max_objects: int, largest: float
) -> list[tuple[int, float, tuple[float, float]]]:
    """Objects of the ``"hard"`` variant as ``(label, diameter, (cx, cy))`` in drawing order (module doc).

    Parents are drawn largest first (with jitter, so large ones sometimes cover
    small ones), each followed by its satellites, so that a parent never hides
    its own satellites; lone tiny objects come last.
    """
    count = int(rng.integers(_MIN_OBJECTS, max(max_objects, _MIN_OBJECTS) + 1))
    sizes = np.exp(rng.uniform(np.log(_PARENT_MIN_SIZE), np.log(largest), count))
    order = np.argsort(-(np.log(sizes) + rng.normal(0.0, 0.5, count)))
    labels = rng.integers(1, len(SHAPE_CLASSES), count)
    objects: list[tuple[int, float, tuple[float, float]]] = []
    for index in order:
        label, size = int(labels[index]), float(sizes[index])
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        objects.append((label, size, (cx, cy)))
        if size < _SATELLITE_PARENT_MIN:
            continue
        for _ in range(int(rng.integers(1, 5))):
            angle = rng.uniform(0.0, 2.0 * np.pi)
            distance = size * rng.uniform(0.7, 1.4)
            # Kept inside the frame, so that every satellite is seen with its parent's context.
            centre = (
                float(np.clip(cx + distance * np.cos(angle), 1.0, width - 1.0)),
                float(np.clip(cy + distance * np.sin(angle), 1.0, height - 1.0)),
            )
            objects.append((label, float(rng.uniform(*_TINY_SIZE)), centre))
    for _ in range(int(rng.integers(0, 3))):
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        objects.append((int(rng.integers(1, len(SHAPE_CLASSES))), float(rng.uniform(*_TINY_SIZE)), centre))
    return objects


@register_dataset("shapes", task="segmentation")
class ShapesDataset(SegmentationDataset):
    """Synthetic multi-scale shapes (see the module doc), generated on the fly.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each has its own images.
        num_images: Dataset length.
        image_size: ``(H, W)`` or one int.
        seed: Dataset seed; the same seed gives byte-identical images.
        transforms: ``(sample, rng) -> sample``; None normalises only.
        with_instances: Also return ``instance_masks``, ``labels`` and ``boxes``.
        max_objects: Most objects per image.
        min_object_size: Smallest object diameter in pixels.
        max_object_fraction: Largest object diameter / short image side.
        aug_seed: Seed for reproducible augmentation (not for generation).
        variant: ``"default"`` (the demo's images) or ``"hard"`` (class-independent
            colours, tiny same-class satellites around larger objects; module doc).
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 512,
        image_size: int | tuple[int, int] = (128, 128),
        seed: int = 0,
        transforms: Transform | None = None,
        with_instances: bool = False,
        max_objects: int = 8,
        min_object_size: float = 4.0,
        max_object_fraction: float = 0.6,
        aug_seed: int | None = None,
        variant: str = "default",
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"shapes split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if variant not in SHAPE_VARIANTS:
            raise ValueError(f"shapes variant must be one of {SHAPE_VARIANTS}, got {variant!r}")
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(height, width) < 16:
            raise ValueError(f"image_size must be at least 16x16, got {height}x{width}")
        super().__init__(SHAPE_CLASSES, SHAPE_PALETTE, transforms, aug_seed)
        self.split = split
        self.num_images = num_images
        self.image_size = (int(height), int(width))
        self.seed = seed
        self.with_instances = with_instances
        self.max_objects = max_objects
        self.min_object_size = min_object_size
        self.max_object_fraction = max_object_fraction
        self.variant = variant

    def __len__(self) -> int:
        return self.num_images

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        return render_shapes(
            rng, *self.image_size, self.max_objects, self.min_object_size,
            self.max_object_fraction, self.variant,
        )  # fmt: skip

    def load(self, index: int) -> RawSample:
        image, mask, instance_masks, labels = self._render(index)
        sample = RawSample(image=image, mask=mask, path=f"shapes/{self.split}/{index}")
        if self.with_instances:
            sample.instance_masks, sample.labels = instance_masks, labels
        return sample

    def load_instances(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Visible instance masks ``(N, H, W)`` bool and labels ``(N,)`` without transforms."""
        _, _, instance_masks, labels = self._render(self._check_index(index))
        return instance_masks, labels

    def write_to_folder(self, root: str | Path) -> Path:
        """Write this split in the generic folder layout (``FolderDataset`` reads it back).

        Files: ``root/images/<split>/<i:05d>.png``, ``root/masks/<split>/<i:05d>.png``
        and ``root/classes.yaml``.

        Returns:
            ``root`` as a Path.
        """
        root = Path(root)
        write_classes_yaml(root, self.classes, self.palette)
        for index in range(len(self)):
            image, mask = self.load_raw(index)
            write_folder_sample(root, self.split, f"{index:05d}", image, mask)
        return root
