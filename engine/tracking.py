"""Object identities across video frames: IoU association, ByteTrack-style.

ByteTrack (Zhang et al., 2022) matches in two stages: confident detections first,
against every live track; then the low-score detections, which are often the same
objects partly hidden or blurred, against the tracks still unmatched. Only
confident detections start new tracks, so low-score noise never becomes an
identity. Tracks predict their next box with a constant-velocity model (a light
stand-in for ByteTrack's Kalman filter) and survive `max_lost` frames unseen.

Matching is greedy by IoU (highest first) instead of the Hungarian algorithm: it
needs no extra dependency and differs only when boxes overlap ambiguously.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine.results import Box, Detections


@dataclass
class TrackerConfig:
    high_score: float = 0.5  # first-stage detections; also the floor to start a track
    low_score: float = 0.1  # below this a detection is ignored
    new_track_score: float = 0.6  # a new identity needs this much confidence
    match_iou: float = 0.3  # first stage: minimum IoU with the predicted box
    low_match_iou: float = 0.5  # second stage is stricter: low scores are noisier
    max_lost: int = 30  # frames a track survives without a match
    class_aware: bool = True  # only match boxes of the same label


@dataclass
class Track:
    track_id: int
    box: np.ndarray  # x0 y0 x1 y1 of the last match
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    label: str = ""
    label_id: int = -1
    score: float = 0.0
    hits: int = 1
    lost: int = 0  # frames since the last match

    def predicted(self) -> np.ndarray:
        return self.box + self.velocity * (self.lost + 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by decreasing IoU, each row and column used once, IoU ≥ threshold."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    order = np.argsort(-iou, axis=None, kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in order:
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


class ByteTracker:
    """Feed one frame's boxes at a time; get them back with stable `track_id`s."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = 1

    def update(self, boxes: list[Box]) -> list[Box]:
        """Return this frame's tracked boxes (copies with track_id set).

        Confident boxes that start no track (score below `new_track_score`) come back
        with track_id None; low-score boxes that match no track are dropped, as in
        ByteTrack.
        """
        cfg = self.config
        high = [b for b in boxes if b.score >= cfg.high_score]
        low = [b for b in boxes if cfg.low_score <= b.score < cfg.high_score]
        out: list[Box] = []

        # Stage 1: confident boxes against all tracks (live and recently lost).
        pool = list(range(len(self.tracks)))
        matched_tracks: set[int] = set()
        unmatched_high = list(range(len(high)))
        for ti, bi in self._match(pool, high, cfg.match_iou):
            self._hit(self.tracks[ti], high[bi])
            matched_tracks.add(ti)
            unmatched_high.remove(bi)
            out.append(replace(high[bi], track_id=self.tracks[ti].track_id))

        # Stage 2: low-score boxes against the tracks seen last frame and still unmatched.
        pool = [i for i in range(len(self.tracks))
                if i not in matched_tracks and self.tracks[i].lost == 0]
        for ti, bi in self._match(pool, low, cfg.low_match_iou):
            self._hit(self.tracks[ti], low[bi])
            matched_tracks.add(ti)
            out.append(replace(low[bi], track_id=self.tracks[ti].track_id))

        # Unmatched tracks age; old ones are forgotten.
        survivors = []
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.lost += 1
            if track.lost <= cfg.max_lost:
                survivors.append(track)
        self.tracks = survivors

        # New identities only from confident, unexplained boxes.
        for bi in unmatched_high:
            box = high[bi]
            if box.score >= cfg.new_track_score:
                track = Track(self.next_id, np.array(box.xyxy, dtype=np.float64),
                              label=box.label, label_id=box.label_id, score=box.score)
                self.next_id += 1
                self.tracks.append(track)
                out.append(replace(box, track_id=track.track_id))
            else:
                out.append(replace(box, track_id=None))
        return out

    def update_detections(self, det: Detections) -> Detections:
        return Detections(boxes=self.update(det.boxes), image_size=det.image_size,
                          labels=det.labels)

    def _match(self, track_idx: list[int], boxes: list[Box],
               threshold: float) -> list[tuple[int, int]]:
        if not track_idx or not boxes:
            return []
        predicted = np.array([self.tracks[i].predicted() for i in track_idx])
        observed = np.array([b.xyxy for b in boxes], dtype=np.float64)
        iou = iou_matrix(predicted, observed)
        if self.config.class_aware:
            same = np.array([[self.tracks[i].label == b.label for b in boxes]
                             for i in track_idx])
            iou = np.where(same, iou, 0.0)
        return [(track_idx[r], c) for r, c in greedy_match(iou, threshold)]

    @staticmethod
    def _hit(track: Track, box: Box) -> None:
        new = np.array(box.xyxy, dtype=np.float64)
        step = (new - track.box) / (track.lost + 1)
        # Smoothed velocity: steady motion is followed, a jittery box does not fling it.
        track.velocity = step if track.hits == 1 else 0.6 * step + 0.4 * track.velocity
        track.box = new
        track.score = box.score
        track.hits += 1
        track.lost = 0

    # -- resume support -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "tracks": [
            {"track_id": t.track_id, "box": t.box.tolist(), "velocity": t.velocity.tolist(),
             "label": t.label, "label_id": t.label_id, "score": t.score, "hits": t.hits,
             "lost": t.lost} for t in self.tracks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id = int(state.get("next_id", 1))
        self.tracks = [Track(track_id=t["track_id"], box=np.array(t["box"], dtype=np.float64),
                             velocity=np.array(t["velocity"], dtype=np.float64),
                             label=t["label"], label_id=t["label_id"], score=t["score"],
                             hits=t["hits"], lost=t["lost"]) for t in state.get("tracks", [])]
