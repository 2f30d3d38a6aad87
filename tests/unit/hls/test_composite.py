"""The compositor: grid layout, both hosts in the picture and in the mix, encoded once."""

from __future__ import annotations

from ingest.hls.composite import (
    AUDIO_JITTER_S,
    AUDIO_RATE,
    HEIGHT,
    MAX_AUDIO_BUFFER_S,
    WIDTH,
    Compositor,
    fit,
    grid,
)
from ingest.hls.segmenter import Init, Part, Segmenter
from ingest.media.units import Kind
from tests.e2e.egress_helpers import analyse
from tests.unit.webrtc.synth import aac_clip, h264_clip


def test_grid_and_fit() -> None:
    assert grid(1) == [(0, 0, WIDTH, HEIGHT)]
    assert grid(2) == [(0, 0, 640, 720), (640, 0, 640, 720)]
    assert len(grid(5)) == 5
    assert grid(5)[3] == (0, 360, 424, 360)
    assert fit(1280, 720, 640, 720) == (640, 360)  # letterboxed, aspect kept
    assert fit(720, 1280, 640, 360) == (200, 360)
    assert all(v % 4 == 0 for cell in grid(3) for v in cell[2:])


class Sink:
    def __init__(self) -> None:
        self.init: Init | None = None
        self.parts: list[Part] = []

    def on_init(self, init: Init) -> None:
        self.init = init

    def on_part(self, part: Part) -> None:
        self.parts.append(part)

    def on_segment_end(self, msn: int, duration: float) -> None:
        pass


def test_two_hosts_are_drawn_side_by_side_and_mixed() -> None:
    _, video = h264_clip(90, width=640, height=360, gop=30)
    aconfig_a, audio_a = aac_clip(3.0, freq=440, rate=44_100)
    aconfig_b, audio_b = aac_clip(3.0, freq=880, rate=44_100)
    comp = Compositor()
    comp.add_host("a")
    comp.add_host("b")
    sink = Sink()
    seg = Segmenter(sink)
    ai = 0
    for i, frame in enumerate(video):
        t = i * 1000 // 30
        comp.video_in("a", frame)
        if i >= 30:  # b joins at its first keyframe, one second late: a black cell until then
            comp.video_in("b", frame)
        while ai < len(audio_a) and audio_a[ai].dts <= t:
            comp.audio_in("a", audio_a[ai], aconfig_a)
            comp.audio_in("b", audio_b[ai], aconfig_b)
            ai += 1
        for unit in comp.render(t):
            assert comp.video_config is not None
            seg.configure(comp.video_config, comp.audio_config)
            if unit.kind is Kind.VIDEO:
                seg.push_video(unit)
            else:
                seg.push_audio(unit)
    seg.flush()
    assert comp.video_config is not None
    assert (comp.video_config.width, comp.video_config.height) == (WIDTH, HEIGHT)
    assert comp.frames_out == len(video)
    assert sink.init is not None
    left, right, peaks = analyse(sink.init.data + b"".join(p.data for p in sink.parts))
    assert left > 20
    assert abs(left - right) < 0.2 * left  # the same picture in both cells by the end
    assert abs(peaks[0] - 440) < 5
    assert abs(peaks[1] - 880) < 5
    comp.remove_host("b")
    assert list(comp.hosts) == ["a"]


def test_a_hosts_audio_buffer_is_bounded_and_primed_before_mixing() -> None:
    aconfig, audio = aac_clip(1.5, rate=48_000)
    comp = Compositor()
    comp.add_host("a")
    host = comp.hosts["a"]
    comp.audio_in("a", audio[0], aconfig)
    comp.audio_in("a", audio[1], aconfig)
    buffered = host.pcm.shape[1]
    assert 0 < buffered < AUDIO_JITTER_S * AUDIO_RATE
    comp.render(100)  # too little to be mixed yet: kept for later
    assert host.pcm.shape[1] == buffered
    assert not host.primed
    for unit in audio[2:]:  # 1.5 s arrive while nothing is mixed
        comp.audio_in("a", unit, aconfig)
    assert host.pcm.shape[1] == int(MAX_AUDIO_BUFFER_S * AUDIO_RATE)
    comp.render(200)
    assert host.primed
    assert host.pcm.shape[1] < int(MAX_AUDIO_BUFFER_S * AUDIO_RATE)
