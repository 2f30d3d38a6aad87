"""Several hosts, one picture: decode each host, draw a grid, mix the audio, encode once per call.

Used by the egress when more than one participant publishes video; its output (H.264 without
B-frames, keyframe every :data:`GOP_S`, and AAC) goes through the same segmenter as a remuxed
single host, so HLS and the recording show the composite. Everything PyAV does here (decode,
scale, encode) runs on one worker thread per call (:class:`Compositor` methods are called only
from it), never on the event loop.

Layout: a grid of ``ceil(sqrt(n))`` columns, each host scaled to fit its cell with its aspect
ratio kept (black bars), in the order the hosts started publishing. A host without a decoded
picture yet is a black cell. Audio: each host's AAC decoded to 48 kHz stereo float, summed (and
clipped) per 1024-sample frame on the output clock, once :data:`AUDIO_JITTER_S` of it is
buffered; a host whose buffered audio exceeds :data:`MAX_AUDIO_BUFFER_S` loses its oldest
samples (its clock runs ahead of ours).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.audio.resampler import AudioResampler
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import Interpolation, VideoReformatter

from ingest.media.codecs.h264 import (
    parameter_sets,
    split_annexb,
    video_config_from_parameter_sets,
)
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig

log = logging.getLogger("ingest.hls")

WIDTH, HEIGHT, FPS = 1280, 720, 30
"""The composite picture."""
GOP_S = 2
"""Keyframe interval of the composite (segments of one GOP)."""
VIDEO_BITRATE = 2_500_000
AUDIO_RATE = 48_000
AUDIO_BITRATE = 128_000
AAC_FRAME = 1024
MAX_AUDIO_BUFFER_S = 0.5
AUDIO_JITTER_S = 0.06
"""Audio a host must have buffered before it is mixed (again): RTMP delivers in bursts, and a
host mixed from an empty buffer would be chopped into gaps."""


DECODERS = {
    "h264": "h264",
    "hevc": "hevc",
    "vp8": "vp8",
    "vp9": "vp9",
    "aac": "aac",
    "opus": "opus",
}
"""FFmpeg decoder of each codec a host may send (WebRTC hosts' VP8/Opus included)."""


def video_decoder(codec: str) -> VideoCodecContext:
    ctx = av.CodecContext.create(DECODERS.get(codec, codec), "r")
    assert isinstance(ctx, VideoCodecContext)
    return ctx


def audio_decoder(codec: str) -> AudioCodecContext:
    ctx = av.CodecContext.create(DECODERS.get(codec, codec), "r")
    assert isinstance(ctx, AudioCodecContext)
    return ctx


def grid(n: int, width: int = WIDTH, height: int = HEIGHT) -> list[tuple[int, int, int, int]]:
    """Cells (x, y, w, h) for ``n`` hosts, row by row; sizes in multiples of 4 (4:2:0)."""
    if n <= 0:
        return []
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cw, ch = width // cols & ~3, height // rows & ~3
    return [((i % cols) * cw, (i // cols) * ch, cw, ch) for i in range(n)]


def fit(src_w: int, src_h: int, cell_w: int, cell_h: int) -> tuple[int, int]:
    """The largest size with the source's aspect ratio inside the cell, in multiples of 4 (so
    that the 4:2:0 chroma planes split into whole rows)."""
    scale = min(cell_w / src_w, cell_h / src_h)
    return max(4, int(src_w * scale) & ~3), max(4, int(src_h * scale) & ~3)


_AUDIO_MAX = int(MAX_AUDIO_BUFFER_S * AUDIO_RATE)
_AUDIO_CAPACITY = 2 * _AUDIO_MAX
"""Room for twice the bound: the buffered samples move to the front only once it is full."""

Plane = npt.NDArray[np.uint8]


def planes(frame: av.VideoFrame) -> tuple[Plane, Plane, Plane]:
    """Writable numpy views of a yuv420p frame's Y, U and V planes (no copy: the frame's own
    buffers, row padding cut off)."""
    views = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        views.append(rows[:, : plane.width])
    return views[0], views[1], views[2]


class _Host:
    def __init__(self, participant_id: str) -> None:
        self.participant_id = participant_id
        self.video: VideoCodecContext | None = None
        self.video_codec = ""
        self.audio: AudioCodecContext | None = None
        self.audio_record: bytes = b""
        self.resampler: AudioResampler | None = None
        self.picture: av.VideoFrame | None = None
        self.drawn: av.VideoFrame | None = None  # the picture its cell shows now
        self.scaler = VideoReformatter()  # kept: its swscale context is set up once
        # Decoded audio, 48 kHz stereo float, not mixed yet: ``buffer[:, start:end]``.
        self.buffer: npt.NDArray[np.float32] = np.zeros((2, _AUDIO_CAPACITY), np.float32)
        self.start = self.end = 0
        self.primed = False  # enough audio buffered to be mixed

    @property
    def pcm(self) -> npt.NDArray[np.float32]:
        """The buffered audio (a view)."""
        return self.buffer[:, self.start : self.end]

    def push_audio(self, frame: av.AudioFrame) -> None:
        """Append a 48 kHz stereo ``fltp`` frame, dropping the oldest samples beyond
        :data:`MAX_AUDIO_BUFFER_S`."""
        n = frame.samples
        keep = _AUDIO_MAX - n  # of what is buffered, once the frame is in
        if keep <= 0:  # a frame longer than the whole buffer: its end only
            src, n = -_AUDIO_MAX, _AUDIO_MAX
            self.start = self.end = 0
        else:
            src = 0
            self.start = max(self.start, self.end - keep)
            if self.end + n > _AUDIO_CAPACITY:  # move what is kept to the front
                held = self.end - self.start
                self.buffer[:, :held] = self.buffer[:, self.start : self.end]
                self.start, self.end = 0, held
        for channel, plane in enumerate(frame.planes[:2]):
            samples = np.frombuffer(memoryview(plane), np.float32, frame.samples)
            self.buffer[channel, self.end : self.end + n] = samples[src:] if src else samples
        self.end += n


class Compositor:
    """Decoders per host, one encoder pair per call. Call every method from one thread.

    The picture is drawn into one output frame kept for the call (a cell is redrawn only when
    its host decoded a new picture; the whole frame is cleared only when the layout changes),
    each host scaled by swscale straight to its cell's size."""

    def __init__(self, *, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.hosts: dict[str, _Host] = {}
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.frames_out = 0
        self.cells_drawn = 0
        self.decode_errors = 0
        self._venc = self._video_encoder()
        self._aenc = self._audio_encoder()
        self._samples_out = 0
        self._frame = av.VideoFrame(width, height, "yuv420p")
        self._planes = planes(self._frame)
        self._layout: list[tuple[str, int, int, int, int]] = []
        self._mix = np.zeros((2, AAC_FRAME), np.float32)

    def _video_encoder(self) -> VideoCodecContext:
        enc = av.VideoCodecContext.create("libx264", "w")
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = Fraction(1, 1000)
        enc.framerate = Fraction(self.fps)
        enc.bit_rate = VIDEO_BITRATE
        # One thread: x264's slice threads (PyAV's default, all cores) cost more CPU in all (each
        # frame split into slices, threads woken and waited for), and one 720p30 encode at this
        # preset needs a fraction of a core.
        enc.thread_count = 1
        gop = GOP_S * self.fps
        enc.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "high",
            "bf": "0",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
        }
        enc.open()
        return enc

    def _audio_encoder(self) -> AudioCodecContext:
        enc = av.AudioCodecContext.create("aac", "w")
        enc.sample_rate = AUDIO_RATE
        enc.layout = "stereo"
        enc.format = "fltp"
        enc.bit_rate = AUDIO_BITRATE
        enc.time_base = Fraction(1, AUDIO_RATE)
        enc.open()
        record = bytes(enc.extradata or b"")
        self.audio_config = AudioConfig("aac", record, AUDIO_RATE, 2, 2)
        return enc

    # -- hosts ---------------------------------------------------------------------------------

    def add_host(self, participant_id: str) -> None:
        self.hosts.setdefault(participant_id, _Host(participant_id))

    def remove_host(self, participant_id: str) -> None:
        self.hosts.pop(participant_id, None)

    def video_in(self, participant_id: str, unit: MediaUnit) -> None:
        host = self.hosts.get(participant_id)
        if host is None:
            return
        decoder = host.video
        if decoder is None or host.video_codec != unit.codec:
            decoder = host.video = video_decoder(unit.codec)
            host.video_codec = unit.codec
        try:
            for frame in decoder.decode(av.Packet(unit.data)):
                host.picture = frame
        except av.error.FFmpegError as e:
            self.decode_errors += 1
            log.debug("composite: video of %s does not decode: %s", participant_id, e)

    def audio_in(self, participant_id: str, unit: MediaUnit, config: AudioConfig) -> None:
        host = self.hosts.get(participant_id)
        if host is None:
            return
        decoder = host.audio
        if decoder is None or host.audio_record != config.record:
            decoder = host.audio = audio_decoder(config.codec)
            if config.record:
                decoder.extradata = config.record
            host.audio_record = config.record
            host.resampler = AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        assert host.resampler is not None
        try:
            for frame in decoder.decode(av.Packet(unit.data)):
                for out in host.resampler.resample(frame):
                    host.push_audio(out)
        except av.error.FFmpegError as e:
            self.decode_errors += 1
            log.debug("composite: audio of %s does not decode: %s", participant_id, e)

    # -- output --------------------------------------------------------------------------------

    def render(self, t_ms: int) -> list[MediaUnit]:
        """The picture at output time ``t_ms`` and the audio up to it, encoded."""
        return self._video(t_ms) + self._audio(t_ms)

    def _draw(self) -> av.VideoFrame:
        """The output frame, with each cell whose host has a new picture redrawn."""
        w, h = self.width, self.height
        hosts = list(self.hosts.values())
        layout = []
        for (x, y, cw, ch), host in zip(grid(len(hosts), w, h), hosts, strict=True):
            pic = host.picture
            if pic is None or pic.width <= 0 or pic.height <= 0:
                layout.append((host.participant_id, x, y, 0, 0))
                continue
            fw, fh = fit(pic.width, pic.height, cw, ch)
            ox, oy = (x + (cw - fw) // 2) & ~1, (y + (ch - fh) // 2) & ~1
            layout.append((host.participant_id, ox, oy, fw, fh))
        y_, u_, v_ = self._planes
        if layout != self._layout:  # hosts came, went or changed size: black, all redrawn
            self._layout = layout
            y_.fill(16)
            u_.fill(128)
            v_.fill(128)
            for host in hosts:
                host.drawn = None
        for (_, ox, oy, fw, fh), host in zip(layout, hosts, strict=True):
            pic = host.picture
            if pic is None or pic is host.drawn or not fw:
                continue
            host.drawn = pic
            self.cells_drawn += 1
            scaled = host.scaler.reformat(
                pic,
                width=fw,
                height=fh,
                format="yuv420p",
                interpolation=Interpolation.BILINEAR,
                threads=1,
            )
            sy, su, sv = planes(scaled)
            y_[oy : oy + fh, ox : ox + fw] = sy
            cx, cy = ox // 2, oy // 2
            u_[cy : cy + fh // 2, cx : cx + fw // 2] = su
            v_[cy : cy + fh // 2, cx : cx + fw // 2] = sv
        return self._frame

    def _video(self, t_ms: int) -> list[MediaUnit]:
        frame = self._draw()
        frame.pts = t_ms
        frame.time_base = Fraction(1, 1000)
        out: list[MediaUnit] = []
        for packet in self._venc.encode(frame):
            data = bytes(packet)
            pts = int(packet.pts if packet.pts is not None else t_ms)
            dts = int(packet.dts if packet.dts is not None else pts)
            if self.video_config is None or packet.is_keyframe:
                sps, pps = parameter_sets(split_annexb(data))
                if sps and pps:
                    config = video_config_from_parameter_sets(sps, pps)
                    if config != self.video_config:
                        self.video_config = config
            if self.video_config is None:
                continue  # nothing decodable before the first parameter sets
            out.append(MediaUnit(Kind.VIDEO, "h264", dts, pts, data, packet.is_keyframe))
        self.frames_out += 1
        return out

    def _audio(self, t_ms: int) -> list[MediaUnit]:
        out: list[MediaUnit] = []
        while self._samples_out * 1000 // AUDIO_RATE + 1000 * AAC_FRAME // AUDIO_RATE <= t_ms:
            mix = self._mix
            mixed = 0  # samples of ``mix`` written so far (the rest is silence)
            for host in self.hosts.values():
                have = host.end - host.start
                if not host.primed:
                    host.primed = have >= AUDIO_JITTER_S * AUDIO_RATE
                    if not host.primed:
                        continue
                take = min(AAC_FRAME, have)
                if take:
                    pcm = host.buffer[:, host.start : host.start + take]
                    both = min(take, mixed)
                    if both:
                        np.add(mix[:, :both], pcm[:, :both], out=mix[:, :both])
                    if take > mixed:
                        mix[:, mixed:take] = pcm[:, mixed:]
                        mixed = take
                    host.start += take
                if take < AAC_FRAME:
                    host.primed = False  # ran dry: buffer again before mixing it
            if mixed < AAC_FRAME:
                mix[:, mixed:] = 0
            np.clip(mix, -1.0, 1.0, out=mix)
            frame = av.AudioFrame.from_ndarray(mix, format="fltp", layout="stereo")
            frame.sample_rate = AUDIO_RATE
            frame.pts = self._samples_out
            self._samples_out += AAC_FRAME
            for packet in self._aenc.encode(frame):
                if packet.size == 0 or packet.pts is None:
                    continue
                ms = int(packet.pts) * 1000 // AUDIO_RATE
                out.append(MediaUnit(Kind.AUDIO, "aac", ms, ms, bytes(packet), True))
        return out
