"""Tolerances for comparing two fp32 computations of the same maths, with the arithmetic.

Two fp32 paths that add the same K terms in a different order do not agree bit for bit.
Which order a kernel takes depends on the CPU (SSE / AVX2 / AVX-512 / NEON vector widths),
the thread count (how a reduction is split), the shapes (a batch of 1 vs 2, a tile vs the
whole image, one decoding step vs the teacher-forced sequence pick different BLAS / oneDNN
kernels) and the library (torch vs ONNX Runtime). A test that compares such paths must not
assume any one order: `test_explain_captioner` failed on an AVX-512 EPYC at atol=1e-6.

The arithmetic. Each fp32 operation is exact to within u = eps/2 (eps = 2**-23 ~ 1.19e-7).
A sum of K terms, in any order, is within (K-1)·u·Σ|terms| of the exact sum (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., §4.2), so two orders differ by
at most ~K·eps·Σ|terms|: that is the worst case this module uses. Rounding errors of random
sign make ~sqrt(K)·eps typical, so measured differences sit far below these bounds; a
tolerance at the typical size would still fail on some CPU (the captioner's did).

Chained layers: to first order, relative errors of successive layers add, so `depth` layers
whose widest reduction has K terms give depth·K·eps. A layer's other, shorter reductions
(attention over a few tokens, LayerNorm's mean and variance) add errors of the same order;
taking every rounding at its worst already over-counts by ~sqrt(K), which covers them.

Where the worst case says nothing: deep networks without normalisation (a U-Net, a residual
conv stack) chain it into a vacuous bound (the tiny DRUNet run on |weights| reaches 1e19).
Their outputs are images quantised to 8 or 16 bits, where fp32 noise (~1e-6 measured) only
tips a rounding: those tests allow a few code values and say so.

What stays exact: one path compared with itself (the same module on the same inputs and
shapes; transformers' post-processing of the same logits) is bit-identical, and ids,
labels, masks and byte-equal exports are compared exactly. Where an argmax over near-tied
scores can flip between two fp32 paths, the test says so.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23: the spacing of fp32 numbers at 1.0
TINY32 = float(np.finfo(np.float32).tiny)  # smallest normal fp32; below it precision is absolute


class Tol(NamedTuple):
    rtol: float
    atol: float


def fp32_rtol(reduction_len: int, depth: int = 1) -> float:
    """Worst-case relative difference of two fp32 evaluations of `depth` chained layers whose
    widest reduction sums `reduction_len` terms, relative to the size of the summed terms."""
    return depth * reduction_len * EPS32


def fp32_tol(reduction_len: int, depth: int = 1, scale: float = 1.0) -> Tol:
    """(rtol, atol) for two fp32 paths through `depth` layers of reductions of <= K terms.

    rtol = depth·K·eps, the worst-case relative difference (see the module docstring); for a
    chain of unequal layers pass the sum of their reduction lengths as K with depth=1.
    atol = rtol·scale, where `scale` is the size of the terms being summed: an entry that
    cancels to ~0 still carries the absolute error of the terms that made it. For a few
    plain layers, the network run on |weights| and |inputs| gives it rigorously (Higham's
    |fl(AB) - AB| <= γ|A||B|, chained); behind a normalisation (LayerNorm, softmax), the last
    layers' max Σ|w·h|, since normalising resets the size errors are relative to.
    """
    rtol = fp32_rtol(reduction_len, depth)
    return Tol(rtol, rtol * scale)


def logit_error(logit_scale: float, reduction_len: int, depth: int = 1) -> float:
    """Worst-case |δz| of logits z that come out of `depth` fp32 layers (widest reduction K),
    where `logit_scale` is the size of the terms the last layer sums (max Σ|w·h|)."""
    return fp32_rtol(reduction_len, depth) * logit_scale


def softmax_tol(logit_scale: float, reduction_len: int, depth: int = 1, tokens: int = 1) -> Tol:
    """Tolerance for softmax (or sigmoid) outputs whose logits come out of fp32 layers.

    p_i = exp(z_i) / Σ_j exp(z_j), so δp_i / p_i = δz_i - Σ_j p_j δz_j: the error is
    *relative* in p and at most 2·max|δz| (for a sigmoid, (1 - p)·δz, less), with |δz| from
    `logit_error`. The exp, the `tokens`-term normalising sum and the division add
    (tokens + 2)·eps. Relative because probabilities span decades: attention of 1e-10 and
    of 0.3 carry the same relative error, and an absolute tolerance would check neither.
    atol is the smallest normal fp32, below which relative precision is lost.
    """
    rtol = 2 * logit_error(logit_scale, reduction_len, depth) + (tokens + 2) * EPS32
    return Tol(rtol, TINY32)
