"""ByteTrack-style tracker: identities through crossings, occlusion and resumes."""
from __future__ import annotations

import numpy as np

from engine.results import Box
from engine.tracking import ByteTracker, TrackerConfig, greedy_match, iou_matrix


def box(x: float, y: float, label: str = "car", score: float = 0.9, size: float = 40) -> Box:
    return Box(x, y, x + size, y + size, label, score)


def test_iou_matrix_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 100, (6, 2))
    a = np.hstack([a, a + rng.uniform(1, 50, (6, 2))])
    b = rng.uniform(0, 100, (4, 2))
    b = np.hstack([b, b + rng.uniform(1, 50, (4, 2))])
    got = iou_matrix(a, b)
    for i in range(6):
        for j in range(4):
            iw = max(0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            ih = max(0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = iw * ih
            union = ((a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
                     + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter)
            assert abs(got[i, j] - inter / union) < 1e-12
    assert greedy_match(np.array([[0.9, 0.8], [0.85, 0.4]]), 0.3) == [(0, 0), (1, 1)]
    assert greedy_match(np.array([[0.9, 0.8], [0.85, 0.1]]), 0.3) == [(0, 0)]


def run(tracker: ByteTracker, frames: list[list[Box]]) -> list[list[Box]]:
    return [tracker.update(f) for f in frames]


def test_identities_survive_two_objects_crossing():
    # A moves right, B moves left on the same line and they pass through each other.
    # 24 px per frame on 40 px boxes: a box overlaps its previous self less than the
    # match IoU, so only the motion model's prediction keeps the identities.
    # (They start slowly: a new track has no velocity yet.)
    steps = np.cumsum([0, 8, 16] + [24] * 9)
    frames = [[box(10 + s, 50), box(300 - s, 52)] for s in steps]
    out = run(ByteTracker(), frames)
    ids_a = {b.track_id for f in out for b in f if b.y0 == 50}  # A rides at y=50, B at y=52
    ids_b = {b.track_id for f in out for b in f if b.y0 == 52}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    assert all(len(f) == 2 for f in out)


def test_low_score_boxes_keep_a_track_through_occlusion():
    scores = [0.9] * 5 + [0.3] * 5 + [0.9] * 5  # partly hidden in the middle
    frames = [[box(20 + 5 * t, 40, score=s)] for t, s in enumerate(scores)]
    out = run(ByteTracker(), frames)
    assert [len(f) for f in out] == [1] * 15  # the dim frames are kept, not dropped
    assert {b.track_id for f in out for b in f} == {1}
    # Without the second stage (low boxes ignored) the dim frames lose the object.
    single_stage = run(ByteTracker(TrackerConfig(low_score=0.5)), frames)
    assert [len(f) for f in single_stage][5:10] == [0] * 5


def test_low_score_noise_never_starts_a_track():
    rng = np.random.default_rng(0)
    frames = [[box(*rng.uniform(0, 300, 2), score=rng.uniform(0.1, 0.45))] for _ in range(20)]
    tracker = ByteTracker()
    out = run(tracker, frames)
    assert all(f == [] for f in out) and tracker.next_id == 1
    # A confident box below new_track_score is returned without an identity.
    (b,) = ByteTracker().update([box(0, 0, score=0.55)])
    assert b.track_id is None


def test_lost_tracks_come_back_within_max_lost_and_expire_after():
    cfg = TrackerConfig(max_lost=5)
    gap_short = [[box(100, 100)]] * 3 + [[]] * 4 + [[box(100, 100)]]
    assert {b.track_id for f in run(ByteTracker(cfg), gap_short) for b in f} == {1}
    gap_long = [[box(100, 100)]] * 3 + [[]] * 6 + [[box(100, 100)]]
    ids = [b.track_id for f in run(ByteTracker(cfg), gap_long) for b in f]
    assert ids == [1, 1, 1, 2]


def test_labels_are_not_mixed_up():
    frames = [[box(50 + 2 * t, 50, "cat"), box(52 + 2 * t, 51, "dog")] for t in range(10)]
    out = run(ByteTracker(), frames)
    by_label: dict[str, set] = {}
    for f in out:
        for b in f:
            by_label.setdefault(b.label, set()).add(b.track_id)
    assert by_label == {"cat": {1}, "dog": {2}}


def test_state_roundtrip_continues_identities_after_a_resume():
    frames = [[box(10 + 6 * t, 30), box(300 - 6 * t, 90, "bus")] for t in range(24)]
    whole = run(ByteTracker(), frames)
    first = ByteTracker()
    part1 = run(first, frames[:12])
    import json

    state = json.loads(json.dumps(first.state_dict()))  # as stored in the job database
    second = ByteTracker()
    second.load_state_dict(state)
    part2 = run(second, frames[12:])
    assert [[b.track_id for b in f] for f in part1 + part2] == [[b.track_id for b in f]
                                                                for f in whole]
