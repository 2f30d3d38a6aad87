"""The compositor: grid layout, both hosts in the picture and in the mix, encoded once."""

from __future__ import annotations

import av
import numpy as np

from ingest.hls.composite import (
    AAC_FRAME,
    AUDIO_JITTER_S,
    AUDIO_RATE,
    HEIGHT,
    MAX_AUDIO_BUFFER_S,
    WIDTH,
    Compositor,
    _Host,
    fit,
    grid,
    planes,
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


def picture(luma: int, width: int = 1280, height: int = 720, chroma: int = 128) -> av.VideoFrame:
    """A flat yuv420p picture."""
    data = np.full((height * 3 // 2, width), chroma, np.uint8)
    data[:height] = luma
    return av.VideoFrame.from_ndarray(data, format="yuv420p")


def test_each_host_is_scaled_into_its_cell_of_one_reused_frame() -> None:
    comp = Compositor()
    comp.add_host("a")
    comp.add_host("b")
    a, b = comp.hosts["a"], comp.hosts["b"]
    a.picture = picture(200, chroma=90)
    frame = comp._draw()
    y, u, v = planes(frame)
    assert (y[180:540, :640] == 200).all()  # a: 1280x720 fit into 640x720, letterboxed
    assert (u[90:270, :320] == 90).all()
    assert (v[90:270, :320] == 90).all()
    assert (y[:180] == 16).all()
    assert (y[540:] == 16).all()
    assert (y[:, 640:] == 16).all()  # b has no picture yet: a black cell
    assert comp.cells_drawn == 1
    assert comp._draw() is frame  # nothing new: nothing drawn, the same frame encoded again
    assert comp.cells_drawn == 1
    b.picture = picture(100, width=640, height=480)  # 4:3 into 640x720: 640x480
    assert comp._draw() is frame
    assert comp.cells_drawn == 3  # the layout changed: both cells drawn again
    assert (y[120:600, 640:] == 100).all()
    assert (y[:120, 640:] == 16).all()
    assert (y[180:540, :640] == 200).all()
    b.picture = picture(60, width=640, height=480)  # b's next picture: only b's cell
    comp._draw()
    assert comp.cells_drawn == 4
    assert (y[120:600, 640:] == 60).all()
    assert (y[180:540, :640] == 200).all()
    comp.remove_host("a")  # b alone: the whole picture, the old cells cleared
    comp._draw()
    assert (y[:, :160] == 16).all()  # 4:3 in 16:9: pillarboxed
    assert (y[:, 160:1120] == 60).all()


def pcm_frame(values: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.stack([values, -values]).astype(np.float32), format="fltp", layout="stereo"
    )
    frame.sample_rate = AUDIO_RATE
    return frame


def test_buffered_audio_keeps_its_order_and_its_bound_across_the_buffer_end() -> None:
    host = _Host("a")
    sent = np.arange(0, 7 * AUDIO_RATE, dtype=np.float32)  # 7 s, each sample its own value
    for i in range(0, len(sent), 960):
        host.push_audio(pcm_frame(sent[i : i + 960]))
        host.start += min(480, host.end - host.start)  # mixed at half the rate it arrives
        pcm = host.pcm
        assert pcm.shape[1] <= MAX_AUDIO_BUFFER_S * AUDIO_RATE
        assert pcm.shape[1]
        assert pcm[0, -1] == sent[min(i + 960, len(sent)) - 1]
        assert (np.diff(pcm[0]) == 1).all()
        assert (pcm[1] == -pcm[0]).all()
    big = np.arange(AUDIO_RATE, dtype=np.float32)  # a frame longer than the bound: its end
    host.push_audio(pcm_frame(big))
    assert host.pcm.shape[1] == int(MAX_AUDIO_BUFFER_S * AUDIO_RATE)
    assert host.pcm[0, -1] == big[-1]
    assert (np.diff(host.pcm[0]) == 1).all()


def test_the_mix_is_the_clipped_sum_of_the_primed_hosts() -> None:
    comp = Compositor()
    for pid in "abc":
        comp.add_host(pid)
    a, b, c = (comp.hosts[p] for p in "abc")
    a.push_audio(pcm_frame(np.full(AUDIO_RATE // 10, 0.25, np.float32)))
    b.push_audio(pcm_frame(np.full(AUDIO_RATE // 10 + 512, 0.5, np.float32)))
    c.push_audio(pcm_frame(np.full(100, 0.9, np.float32)))  # not primed: not mixed yet
    comp.render(1000 * AAC_FRAME // AUDIO_RATE)  # one AAC frame
    assert np.allclose(comp._mix[0], 0.75)
    assert np.allclose(comp._mix[1], -0.75)
    assert c.pcm.shape[1] == 100
    c.push_audio(pcm_frame(np.full(AUDIO_RATE // 10, 0.9, np.float32)))
    comp.render(2000 * AAC_FRAME // AUDIO_RATE)
    assert np.allclose(comp._mix[0], 1.0)
    assert np.allclose(comp._mix[1], -1.0)
    a.start = a.end - 24  # a runs dry mid-frame: the rest of the frame without it
    b.start = b.end - 1000  # b too, later
    comp.render(3000 * AAC_FRAME // AUDIO_RATE)
    assert np.allclose(comp._mix[0, :24], 1.0)
    assert np.allclose(comp._mix[0, 24:1000], 1.0)  # b + c = 1.4, clipped
    assert np.allclose(comp._mix[0, 1000:], 0.9)  # c alone
    assert not a.primed
    assert not b.primed
    assert c.primed
