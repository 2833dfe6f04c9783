"""WebVTT writer, checked by reading the file back with FFmpeg's WebVTT demuxer."""
from __future__ import annotations

import av

from engine.exporters.webvtt import (
    Cue,
    cues_from_times,
    format_timestamp,
    render_webvtt,
    write_webvtt,
)


def read_back(path) -> list[tuple[float, float, str]]:
    cues = []
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * packet.time_base)
            end = start + float(packet.duration * packet.time_base)
            cues.append((round(start, 3), round(end, 3), bytes(packet).decode("utf-8")))
    return cues


def test_ffmpeg_reads_our_cues_back(tmp_path):
    cues = [Cue(0.0, 1.5, "a red <b>car</b> & a dog"), Cue(1.5, 3723.25, "two\n\nlines -->"),
            Cue(3723.25, 3723.25, "zero-length becomes 1 ms", identifier="last")]
    path = write_webvtt(tmp_path / "c.vtt", cues)
    text = path.read_text()
    assert text.startswith("WEBVTT\n\n")
    assert "01:02:03.250 --> 01:02:03.251" in text
    assert read_back(path) == [
        (0.0, 1.5, "a red &lt;b&gt;car&lt;/b&gt; &amp; a dog"),
        (1.5, 3723.25, "two\nlines --&gt;"),
        (3723.25, 3723.251, "zero-length becomes 1 ms")]


def test_timestamps_and_cues_from_times():
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(59.9996) == "00:01:00.000"
    assert format_timestamp(36000.5) == "10:00:00.500"
    cues = cues_from_times([(2.0, "b"), (0.0, "a")], end_s=5.0)
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(0.0, 2.0, "a"), (2.0, 5.0, "b")]
    assert render_webvtt([]) == "WEBVTT\n\n"
