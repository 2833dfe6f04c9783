"""upsampled_argmax == torch's interpolate(bilinear, align_corners=False) + argmax, the maths
of transformers' post_process_semantic_segmentation, without the full-size logit stack."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from engine.media import label_upsample
from engine.media.label_upsample import upsampled_argmax

TIE = 1e-5  # top-two blended logits closer than this may order either way (float rounding)


def regions(classes: int, h: int, w: int, count: int = 6, seed: int = 0) -> np.ndarray:
    """Logits as a trained segmenter's look: a few large regions, each won by one class,
    over low noise (smoothed), so labels change only along region borders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    centres = rng.uniform(0, 1, (count, 2)) * [h, w]
    owner = ((yy[None] - centres[:, 0, None, None]) ** 2
             + (xx[None] - centres[:, 1, None, None]) ** 2).argmin(0)
    logits = rng.standard_normal((classes, h, w)).astype(np.float32) * 0.5
    for region, cls in enumerate(rng.choice(classes, count, replace=False)):
        logits[cls] += 4.0 * (owner == region)
    return torch.nn.functional.avg_pool2d(torch.from_numpy(logits)[None], 3, 1, 1)[0].numpy()


def reference(logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, top-two margin) of torch's bilinear upsampling."""
    up = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=size,
                                         mode="bilinear", align_corners=False)[0]
    top = up.topk(2, dim=0)
    return up.argmax(0).numpy(), (top.values[0] - top.values[1]).numpy()


def assert_matches(got: np.ndarray, logits: np.ndarray, size: tuple[int, int]) -> None:
    want, margin = reference(logits, size)
    assert got.shape == size and got.dtype == np.int64
    clear = margin > TIE
    assert clear.mean() > 0.999
    np.testing.assert_array_equal(got[clear], want[clear])


@pytest.mark.parametrize("classes,size", [(150, (512, 512)), (40, (768, 1024)), (150, (100, 61)),
                                          (150, (129, 127)), (150, (1, 1))])
def test_region_logits_equal_torch_upsampling(classes, size):
    logits = regions(classes, 128, 128)
    assert label_upsample._boundary_share(logits.argmax(0)) < label_upsample.DENSE_FRACTION
    assert_matches(upsampled_argmax(logits, size), logits, size)


@pytest.mark.parametrize("size", [(512, 683), (40, 29), (13, 17)])
def test_random_logits_equal_torch_upsampling(size):
    """An untrained model: labels change almost everywhere, blended densely."""
    logits = np.random.default_rng(1).standard_normal((19, 13, 17)).astype(np.float32)
    assert_matches(upsampled_argmax(logits, size), logits, size)


def test_block_paths_agree(monkeypatch):
    """Small blocks (sparse ones from the regions, dense ones from the noise), classes
    resized a few at a time, dense blocks on one thread or several: the same labels."""
    logits = np.concatenate([regions(21, 40, 30, seed=2),
                             np.random.default_rng(3).standard_normal((21, 40, 30),
                                                                      ).astype(np.float32)],
                            axis=1)  # top half regions, bottom half noise
    size = (301, 199)
    want, margin = reference(logits, size)
    clear = margin > TIE
    results = [upsampled_argmax(logits, size)]
    monkeypatch.setattr(label_upsample, "BLOCK_VALUES", 21 * 199 * 7)  # 7-row blocks
    monkeypatch.setattr(label_upsample, "DENSE_VALUES", 7 * 199 * 4)  # 4 classes at a time
    monkeypatch.setattr(label_upsample, "_boundary_share", lambda low: 0.0)  # block by block
    results.append(upsampled_argmax(logits, size))
    monkeypatch.setattr(label_upsample, "_boundary_share", lambda low: 1.0)  # all dense
    monkeypatch.setattr(label_upsample, "DENSE_BLOCK_VALUES", 199 * 21 * 5)  # 5-row blocks
    for threads in ("1", "2"):
        monkeypatch.setenv("OCULA_ONNX_THREADS", threads)
        results.append(upsampled_argmax(logits, size))
    for got in results:
        np.testing.assert_array_equal(got[clear], want[clear])


def test_ties_keep_the_first_class_across_class_groups(monkeypatch):
    """Two identical class planes: argmax's rule (the first) holds across class groups
    (numpy's arithmetic is the same for every class)."""
    noise = np.random.default_rng(4).standard_normal((5, 12, 9)).astype(np.float32)
    logits = np.concatenate([noise, noise], axis=0)  # class k and k+5 always tie
    monkeypatch.setattr(label_upsample, "DENSE_VALUES", 40 * 31 * 3)  # groups straddle the twin
    got = upsampled_argmax(logits, (40, 31))
    assert got.max() < 5  # (torch's own kernel does not keep this rule at exact ties)
    np.testing.assert_array_equal(got, upsampled_argmax(noise, (40, 31)))


def test_same_size_is_the_plain_argmax():
    logits = regions(7, 20, 30)
    np.testing.assert_array_equal(upsampled_argmax(logits, (20, 30)), logits.argmax(0))


def test_a_12_megapixel_label_map_needs_no_full_size_logits():
    """150 classes at 3000x4000 would be 7.2 GB of upsampled logits; the label map itself
    is 92 MB (int64). Traced numpy memory stays within a few blocks of it."""
    logits = regions(150, 128, 128)
    tracemalloc.start()
    try:
        labels = upsampled_argmax(logits, (3000, 4000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < labels.nbytes + 120 * 2**20
    small = upsampled_argmax(logits, (750, 1000))
    assert_matches(small, logits, (750, 1000))
    assert set(np.unique(labels)) == set(np.unique(small))  # the same regions, at 4x the size
