"""Remux: H.264 access units and AAC frames in, CMAF parts (moof+mdat) and segments out.

Pure and synchronous (no asyncio, no I/O): the egress feeds units as they come from the hub and
receives, through a :class:`SegmenterSink`, an init segment, each part as soon as it is cut, and
the end of each segment. Nothing is decoded; B-frames keep their composition offsets.

Cutting rules (times are the units' millisecond dts):

* a **segment** starts at a keyframe; a keyframe ends the current segment once it lasts at least
  :data:`SEGMENT_MIN_MS` (with a 2 s GOP every segment is one GOP);
* a **part** ends when the next video unit arrives and one more frame interval would take the
  part past :data:`PART_TARGET_MS`, or at the end of a segment. A part is known complete only
  when the next frame arrives, since a sample's duration is the distance to the next one;
* audio frames go into the part being cut if their dts is before the cut, else into the next;
  audio that comes before the first keyframe waits for it (what is older than it is dropped).

Timeline: the first keyframe maps to 0. :meth:`Segmenter.restart` (a new source) continues the
timeline where the last part ended, so players never see time jump back; a new codec config
makes a new init segment, and the next segment is marked as a discontinuity.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ingest.errors import MediaError
from ingest.hls import fmp4
from ingest.media.units import AudioConfig, MediaUnit, VideoConfig

log = logging.getLogger("ingest.hls")

PART_TARGET_MS = 334
"""Longest part (the playlist's ``PART-TARGET``): 10 frames at 30 fps, 8 at 25 fps."""
SEGMENT_MIN_MS = 1000
"""A keyframe starts a new segment once the current one lasts this long."""
AUDIO_RESYNC_FRAMES = 3
"""Audio decode time follows the sample count; it is reset from the dts when they disagree by
more than this many frames (a gap in the publisher's audio)."""
DEFAULT_FRAME_MS = 33
"""Duration given to the very last video frame of a stream (nothing follows to measure it)."""
MAX_PENDING_AUDIO = 256
"""Audio frames held while no video comes (about 6 s of AAC at 44.1 kHz); older ones drop."""


@dataclass(frozen=True, slots=True)
class Init:
    """An init segment; ``id`` grows with each new codec configuration or source."""

    id: int
    data: bytes
    video: VideoConfig | None
    audio: AudioConfig | None


@dataclass(frozen=True, slots=True)
class Part:
    """One moof+mdat: ``number`` counts parts across segments (the part's URI)."""

    number: int
    msn: int
    index: int
    duration: float
    independent: bool
    data: bytes
    init: Init


class SegmenterSink(Protocol):
    def on_init(self, init: Init) -> None: ...

    def on_part(self, part: Part) -> None: ...

    def on_segment_end(self, msn: int, duration: float) -> None: ...


SUPPORTED_VIDEO = ("h264",)
SUPPORTED_AUDIO = ("aac",)


def check_codecs(video: VideoConfig | None, audio: AudioConfig | None) -> None:
    """Raise :class:`MediaError` (with what to change) for media the remux cannot carry."""
    if video is not None and video.codec not in SUPPORTED_VIDEO:
        raise MediaError(
            f"HLS and recording carry H.264 video, the publisher sends {video.codec}: "
            "set the encoder to H.264 (x264 / NVENC H.264)"
        )
    if audio is not None and audio.codec not in SUPPORTED_AUDIO:
        raise MediaError(
            f"HLS and recording carry AAC audio, the publisher sends {audio.codec}: "
            "set the encoder's audio to AAC"
        )
    if audio is not None and audio.sample_rate <= 0:
        raise MediaError("the AAC config has no sample rate: the publisher's audio is damaged")


class Segmenter:
    def __init__(
        self,
        sink: SegmenterSink,
        *,
        part_target_ms: int = PART_TARGET_MS,
        segment_min_ms: int = SEGMENT_MIN_MS,
    ) -> None:
        self.sink = sink
        self.part_target_ms = part_target_ms
        self.segment_min_ms = segment_min_ms
        self.init: Init | None = None
        self._video: VideoConfig | None = None
        self._audio: AudioConfig | None = None
        self._dirty = True  # config changed since the last init
        self._init_id = 0
        self.msn = 0  # the segment being built (or the next one)
        self._part_index = 0
        self._part_number = 0
        self._sequence = 1  # mfhd sequence numbers
        self._clock = 0  # ms: where the timeline ends (end of the last part)
        self._offset: int | None = None  # timeline ms = unit dts + offset
        self._seg_start = 0
        self._part_start = 0
        self._video_units: list[MediaUnit] = []
        self._audio_units: deque[MediaUnit] = deque()
        self._audio_next: int | None = None  # next audio decode time, in samples
        self._last_audio_dts = -(1 << 62)
        self.late_audio = 0
        """Audio units dropped because they came after the part that should hold them."""
        self.parts_cut = 0

    # -- configuration -------------------------------------------------------------------------

    def configure(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        """Set the codec configs; a change ends the current segment (the next one starts at a
        keyframe, with a new init segment)."""
        if video == self._video and audio == self._audio:
            return
        check_codecs(video, audio)
        self.flush()
        self._video, self._audio = video, audio
        self._dirty = True

    def restart(self) -> None:
        """A new source (or the same one after a gap): end what is pending; the next keyframe
        continues the timeline where it stopped (a new init only if the config differs)."""
        self.flush()

    # -- input ---------------------------------------------------------------------------------

    def push_video(self, unit: MediaUnit) -> None:
        if self._video is None:
            raise MediaError("video unit before the video config")
        if self._offset is None:
            if not unit.keyframe:
                return  # wait for a keyframe
            self._offset = self._clock - unit.dts
            while self._audio_units and self._audio_units[0].dts < unit.dts:
                self._audio_units.popleft()
            self._start_segment()
        units = self._video_units
        if units:
            t = unit.dts + self._offset
            prev = units[-1].dts + self._offset
            step = max(t - prev, 1)
            if unit.keyframe and t - self._seg_start >= self.segment_min_ms:
                self._cut(t, end_segment=True)
                self._start_segment()
            elif t - self._part_start + step > self.part_target_ms:
                self._cut(t, end_segment=False)
        self._video_units.append(unit)  # not `units`: a cut replaced the list

    def push_audio(self, unit: MediaUnit) -> None:
        if self._audio is None:
            raise MediaError("audio unit before the audio config")
        if unit.dts <= self._last_audio_dts:
            return  # a unit given twice
        if self._offset is not None and unit.dts + self._offset < self._part_start:
            self.late_audio += 1  # older than what is already cut
            return
        # (before the first keyframe it waits: the keyframe keeps what is not older than it)
        self._last_audio_dts = unit.dts
        self._audio_units.append(unit)
        if len(self._audio_units) > MAX_PENDING_AUDIO:
            self._audio_units.popleft()

    def flush(self) -> None:
        """Cut what is pending as a last part and end the segment (source gone or changed).
        The next segment starts at the next keyframe, placed where the timeline ends now."""
        if self._offset is not None and self._video_units:
            last = self._video_units[-1]
            step = DEFAULT_FRAME_MS
            if len(self._video_units) > 1:
                step = max(last.dts - self._video_units[-2].dts, 1)
            self._cut(last.dts + self._offset + step, end_segment=True)
        self._video_units = []
        self._audio_units.clear()
        self._last_audio_dts = -(1 << 62)
        self._offset = None
        self._audio_next = None

    # -- output --------------------------------------------------------------------------------

    def _start_segment(self) -> None:
        if self._dirty:
            self._init_id += 1
            self.init = Init(
                self._init_id,
                fmp4.init_segment(self._video, self._audio),
                self._video,
                self._audio,
            )
            self._dirty = False
            self.sink.on_init(self.init)
        self._seg_start = self._part_start = self._clock
        self._part_index = 0

    def _cut(self, end: int, *, end_segment: bool) -> None:
        offset = self._offset
        assert offset is not None
        assert self.init is not None
        units = self._video_units
        samples: list[fmp4.Sample] = []
        for i, u in enumerate(units):
            nxt = units[i + 1].dts + offset if i + 1 < len(units) else end
            samples.append(
                fmp4.Sample(
                    fmp4.video_sample_data(u.data),
                    max(nxt - (u.dts + offset), 1) * 90,
                    u.keyframe,
                    (u.pts - u.dts) * 90,
                )
            )
        runs = [fmp4.TrackRun(fmp4.VIDEO_TRACK_ID, (units[0].dts + offset) * 90, samples)]
        audio_run = self._audio_run(end)
        if audio_run is not None:
            runs.append(audio_run)
        part = Part(
            number=self._part_number,
            msn=self.msn,
            index=self._part_index,
            duration=(end - self._part_start) / 1000,
            independent=units[0].keyframe,
            data=fmp4.fragment(self._sequence, runs),
            init=self.init,
        )
        self._sequence += 1
        self._part_number += 1
        self._part_index += 1
        self._video_units = []
        self._part_start = self._clock = end
        self.parts_cut += 1
        self.sink.on_part(part)
        if end_segment:
            duration = (end - self._seg_start) / 1000
            msn = self.msn
            self.msn += 1
            self.sink.on_segment_end(msn, duration)

    def _audio_run(self, end: int) -> fmp4.TrackRun | None:
        audio = self._audio
        offset = self._offset
        if audio is None or offset is None or not self._audio_units:
            return None
        taken: list[MediaUnit] = []
        while self._audio_units and self._audio_units[0].dts + offset < end:
            taken.append(self._audio_units.popleft())
        if not taken:
            return None
        rate = audio.sample_rate
        from_dts = round((taken[0].dts + offset) * rate / 1000)
        start = self._audio_next
        if start is None or abs(start - from_dts) > AUDIO_RESYNC_FRAMES * fmp4.AAC_FRAME_SAMPLES:
            start = max(from_dts, 0)
        self._audio_next = start + len(taken) * fmp4.AAC_FRAME_SAMPLES
        samples = [fmp4.Sample(u.data, fmp4.AAC_FRAME_SAMPLES) for u in taken]
        return fmp4.TrackRun(fmp4.AUDIO_TRACK_ID, start, samples)
