"""Segmentation outputs: palette label maps, COCO RLE masks, alpha mattes and cut-outs.

COCO run-length encoding is implemented here (no pycocotools needed at run
time): runs over the mask in column-major (Fortran) order, starting with a run
of zeros, optionally compressed into pycocotools' ASCII form (5 bits per
character, each count after the second stored as a difference from the count two
before). Tests check it against a decode roundtrip and against pycocotools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.exporters.detections import coco_category_offset
from engine.media.image import atomic_write_bytes, ensure_not_input, write_image
from engine.results import Segmentation, SegmentInstance

VOID_INDEX = 255  # palette index of unlabelled pixels (PASCAL VOC's convention)


# -- COCO RLE ------------------------------------------------------------------------------------


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO run lengths of a (H, W) mask: column-major, zeros first."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)  # COCO runs always start with the zeros' run, possibly empty
    return runs


def counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' rleToString: LEB128-like 5-bit groups offset by '0' (48)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count)
        if i > 2:
            x -= int(counts[i - 2])  # delta against the same-parity run keeps numbers small
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # Python's >> is arithmetic like C's on signed longs
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(text: str | bytes) -> list[int]:
    """pycocotools' rleFrString, the inverse of `counts_to_string`."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x = shift = 0
        more = True
        while more:
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * shift)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of a (H, W) boolean mask: {"size": [h, w], "counts": str | list[int]}."""
    h, w = np.asarray(mask).shape[:2]
    counts = rle_counts(mask)
    return {"size": [int(h), int(w)], "counts": counts_to_string(counts) if compressed else counts}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """(H, W) bool mask from a COCO RLE (compressed string or count list)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h * w} for size {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major back to (H, W)


def rle_area(rle: Mapping[str, Any]) -> int:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    return int(sum(counts[1::2]))


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, width, height] of a mask's true pixels (zeros when empty)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]


# -- palette label maps -----------------------------------------------------------------------


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map: distinct, deterministic colours by bit interleaving."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def label_map_image(label_map: np.ndarray) -> Image.Image:
    """Mode "P" image: pixel = class id, unlabelled (-1) = 255; VOC palette attached.

    Palette PNGs hold at most 255 classes (+ void); larger label sets need `write_label_map`'s
    16-bit fallback.
    """
    labels = np.asarray(label_map)
    if labels.size and labels.max() >= VOID_INDEX:
        raise ValueError(f"label ids up to {int(labels.max())} do not fit a palette PNG")
    indices = np.where(labels < 0, VOID_INDEX, labels).astype(np.uint8)
    img = Image.fromarray(indices, mode="P")
    palette = voc_palette()
    palette[VOID_INDEX] = (224, 224, 192)  # VOC's void colour
    img.putpalette(palette.ravel().tolist())
    return img


def write_label_map(
    path: str | os.PathLike, seg: Segmentation, *, inputs: Iterable[Path] = ()
) -> Path:
    """Palette PNG of the semantic label map (16-bit grey PNG when ids exceed 254).

    Panoptic/instance results without a label map are rasterised from their instances.
    """
    path = Path(path)
    ensure_not_input(path, inputs)
    label_map = seg.label_map if seg.label_map is not None else instances_to_label_map(seg)
    if label_map.size and label_map.max() >= VOID_INDEX:
        # ids stay exact; -1 becomes 65535
        return write_image(path, np.where(label_map < 0, 65535, label_map).astype(np.uint16))
    return write_image(path, label_map_image(label_map))


def instances_to_label_map(seg: Segmentation) -> np.ndarray:
    w, h = seg.image_size
    out = np.full((h, w), -1, dtype=np.int32)
    for inst in sorted(seg.instances, key=lambda i: i.score):  # best-scoring painted last
        out[inst.mask] = inst.label_id
    return out


# -- COCO JSON with RLE masks -------------------------------------------------------------------


def coco_segmentation_dict(results: Sequence[Segmentation], image_names: Sequence[str]) -> dict:
    """COCO results-style document: images, categories, one annotation per instance (RLE)."""
    if len(results) != len(image_names):
        raise ValueError("one image name per segmentation result is needed")
    labels: dict[int, str] = {}
    for seg in results:
        labels.update(seg.labels)
        for inst in seg.instances:
            labels.setdefault(inst.label_id, inst.label)
    offset = coco_category_offset(i for i in labels if i >= 0)
    images, annotations = [], []
    for image_id, (seg, name) in enumerate(zip(results, image_names), start=1):
        w, h = seg.image_size
        images.append({"id": image_id, "file_name": str(name), "width": int(w), "height": int(h)})
        for inst in seg.instances or class_instances(seg):
            rle = rle_encode(inst.mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(inst.label_id) + offset,
                    "segmentation": rle,
                    "area": rle_area(rle),
                    "bbox": mask_bbox(inst.mask),
                    "iscrowd": 0,
                    "score": round(float(inst.score), 6),
                }
            )
    categories = [{"id": int(i) + offset, "name": n} for i, n in sorted(labels.items())
                  if i >= 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def class_instances(seg: Segmentation) -> list[SegmentInstance]:
    """Semantic results have no instances: one mask per class present, for COCO export."""
    if seg.label_map is None:
        return []
    out = []
    for label_id in np.unique(seg.label_map):
        if label_id < 0:
            continue
        out.append(
            SegmentInstance(
                mask=seg.label_map == label_id,
                label_id=int(label_id),
                label=seg.labels.get(int(label_id), str(int(label_id))),
                segment_id=int(label_id),
            )
        )
    return out


def write_coco_segmentation(
    path: str | os.PathLike,
    results: Sequence[Segmentation],
    image_names: Sequence[str],
    *,
    inputs: Iterable[Path] = (),
) -> Path:
    path = Path(path)
    ensure_not_input(path, inputs)
    doc = coco_segmentation_dict(results, image_names)
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode("utf-8"))
    return path


# -- alpha mattes ------------------------------------------------------------------------------


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(alpha, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def write_alpha(path: str | os.PathLike, alpha: np.ndarray, *, inputs: Iterable[Path] = ()) -> Path:
    """The matte itself as an 8-bit grey PNG (0 = background, 255 = foreground)."""
    path = Path(path)
    ensure_not_input(path, inputs)
    return write_image(path, alpha_to_uint8(alpha))


def write_cutout(
    path: str | os.PathLike,
    rgb: Image.Image | np.ndarray,
    alpha: np.ndarray,
    *,
    inputs: Iterable[Path] = (),
) -> Path:
    """Transparent PNG: the image's colours with the matte as its alpha channel.

    `rgb` may be 16-bit (H, W, 3) uint16; the PNG then stays 16-bit.
    """
    path = Path(path)
    ensure_not_input(path, inputs)
    if path.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
        raise ValueError(f"{path}: a cut-out needs a format with transparency (.png, .webp, .tiff)")
    arr = np.asarray(rgb.convert("RGB")) if isinstance(rgb, Image.Image) else np.asarray(rgb)
    if arr.shape[:2] != np.asarray(alpha).shape[:2]:
        raise ValueError(f"matte {np.asarray(alpha).shape[:2]} and image {arr.shape[:2]} differ")
    if arr.dtype == np.uint16:
        matte = np.clip(np.rint(np.asarray(alpha, np.float32) * 65535), 0, 65535).astype(np.uint16)
    else:
        matte = alpha_to_uint8(alpha)
    return write_image(path, arr[..., :3], alpha=matte)
