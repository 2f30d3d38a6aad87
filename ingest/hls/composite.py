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


class _Host:
    def __init__(self, participant_id: str) -> None:
        self.participant_id = participant_id
        self.video: VideoCodecContext | None = None
        self.video_codec = ""
        self.audio: AudioCodecContext | None = None
        self.audio_record: bytes = b""
        self.resampler: AudioResampler | None = None
        self.picture: av.VideoFrame | None = None
        self.pcm: npt.NDArray[np.float32] = np.zeros((2, 0), np.float32)
        self.primed = False  # enough audio buffered to be mixed


class Compositor:
    """Decoders per host, one encoder pair per call. Call every method from one thread."""

    def __init__(self, *, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.hosts: dict[str, _Host] = {}
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.frames_out = 0
        self.decode_errors = 0
        self._venc = self._video_encoder()
        self._aenc = self._audio_encoder()
        self._samples_out = 0
        self._canvas = np.zeros((height * 3 // 2, width), np.uint8)

    def _video_encoder(self) -> VideoCodecContext:
        enc = av.VideoCodecContext.create("libx264", "w")
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = Fraction(1, 1000)
        enc.framerate = Fraction(self.fps)
        enc.bit_rate = VIDEO_BITRATE
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
            frames = decoder.decode(av.Packet(unit.data))
            for frame in frames:
                for out in host.resampler.resample(frame):
                    host.pcm = np.concatenate([host.pcm, out.to_ndarray().astype(np.float32)], 1)
        except av.error.FFmpegError as e:
            self.decode_errors += 1
            log.debug("composite: audio of %s does not decode: %s", participant_id, e)
            return
        excess = host.pcm.shape[1] - int(MAX_AUDIO_BUFFER_S * AUDIO_RATE)
        if excess > 0:
            host.pcm = host.pcm[:, excess:]

    # -- output --------------------------------------------------------------------------------

    def render(self, t_ms: int) -> list[MediaUnit]:
        """The picture at output time ``t_ms`` and the audio up to it, encoded."""
        return self._video(t_ms) + self._audio(t_ms)

    def _draw(self) -> av.VideoFrame:
        w, h = self.width, self.height
        canvas = self._canvas
        canvas[:h] = 16  # black
        canvas[h:] = 128
        hosts = list(self.hosts.values())
        for (x, y, cw, ch), host in zip(grid(len(hosts), w, h), hosts, strict=True):
            pic = host.picture
            if pic is None or pic.width <= 0 or pic.height <= 0:
                continue
            fw, fh = fit(pic.width, pic.height, cw, ch)
            ox, oy = (x + (cw - fw) // 2) & ~1, (y + (ch - fh) // 2) & ~1
            planes = pic.reformat(width=fw, height=fh, format="yuv420p").to_ndarray()
            canvas[oy : oy + fh, ox : ox + fw] = planes[:fh]
            # U and V planes are stored below Y, each as rows of half width packed two per row.
            u = planes[fh : fh + fh // 4].reshape(fh // 2, fw // 2)
            v = planes[fh + fh // 4 :].reshape(fh // 2, fw // 2)
            cu = canvas[h : h + h // 4].reshape(h // 2, w // 2)
            cv = canvas[h + h // 4 :].reshape(h // 2, w // 2)
            cu[oy // 2 : oy // 2 + fh // 2, ox // 2 : ox // 2 + fw // 2] = u
            cv[oy // 2 : oy // 2 + fh // 2, ox // 2 : ox // 2 + fw // 2] = v
        return av.VideoFrame.from_ndarray(canvas, format="yuv420p")

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
            mix = np.zeros((2, AAC_FRAME), np.float32)
            for host in self.hosts.values():
                have = host.pcm.shape[1]
                if not host.primed:
                    host.primed = have >= AUDIO_JITTER_S * AUDIO_RATE
                    if not host.primed:
                        continue
                take = min(AAC_FRAME, have)
                if take:
                    mix[:, :take] += host.pcm[:, :take]
                    host.pcm = host.pcm[:, take:]
                if take < AAC_FRAME:
                    host.primed = False  # ran dry: buffer again before mixing it
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
