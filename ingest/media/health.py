"""Per-publisher stream health: rates, GOP, codec details and plain-language hints.

Fed with the units and configurations a :class:`~ingest.flv.tags.TagReader` produces; the
caller passes the time (``now``, seconds, any monotonic origin) so nothing here reads a clock.
Rates are measured over a sliding window of arrival times; frame rate, keyframe interval and
A/V skew come from the media timestamps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ingest.errors import MediaError
from ingest.media.codecs import h264
from ingest.media.codecs.aac import object_type_name
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig

WINDOW_S = 5.0
MAX_KEYFRAME_INTERVAL_S = 2.0
KEYFRAME_TOLERANCE_MS = 100  # a 2 s GOP measured in rounded ms may read 2.03 s
MAX_AV_SKEW_MS = 1000
MAX_VIDEO_BITRATE_KBPS = 8000
MAX_PIXELS = 1920 * 1088
MIN_FPS = 15.0
MIN_SPAN_FOR_FPS_S = 2.0
NO_AUDIO_AFTER_S = 5.0
BROWSER_PROFILES = frozenset({66, 77, 100})


_Sample = tuple[float, Kind, int, int]
"""(arrival time, kind, size, dts) of one unit: a plain tuple, one is made per unit."""
_AT: Final = 0
_KIND: Final = 1
_SIZE: Final = 2
_DTS: Final = 3


class Health:
    """Health of one publisher's stream; see :meth:`snapshot` and :meth:`hints`."""

    def __init__(self, window: float = WINDOW_S) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.encoder: str | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self._samples: deque[_Sample] = deque()
        self._first_at: float | None = None
        self._first_video_at: float | None = None
        self._gop_start: int | None = None  # dts of the last keyframe (or first frame)
        self._keyframes = 0
        self._key_interval_ms: int | None = None
        self._max_pts: int | None = None
        self._last_reorder_at: float | None = None
        self._last_video_dts: int | None = None
        self._last_audio_dts: int | None = None
        self._sps: h264.Sps | None = None

    # ---------------------------------------------------------------------------------- input

    def on_config(self, config: VideoConfig | AudioConfig) -> None:
        """A new decoder configuration (the first one included)."""
        if isinstance(config, VideoConfig):
            self.video_config = config
            self._max_pts = None
            self._sps = None
            if config.codec == "h264" and config.sps:
                try:
                    self._sps = h264.parse_sps(config.sps[0])
                except MediaError:
                    self._sps = None
        else:
            self.audio_config = config

    def on_metadata(self, values: Mapping[str, object]) -> None:
        """Remember the encoder name an ``onMetaData`` announces."""
        encoder = values.get("encoder")
        self.encoder = encoder if isinstance(encoder, str) else None

    def on_unit(self, unit: MediaUnit, now: float) -> None:
        """One unit arrived at ``now`` (seconds)."""
        if self._first_at is None:
            self._first_at = now
        kind = unit.kind
        dts = unit.dts
        samples = self._samples
        samples.append((now, kind, len(unit.data), dts))
        horizon = now - self.window
        while samples[0][_AT] <= horizon:  # (the one just added is newer)
            samples.popleft()
        if kind is Kind.AUDIO:
            self.audio_frames += 1
            self._last_audio_dts = dts
            return
        self.video_frames += 1
        if self._first_video_at is None:
            self._first_video_at = now
        self._last_video_dts = dts
        gop_start = self._gop_start
        if unit.keyframe:
            if self._keyframes and gop_start is not None and dts > gop_start:
                self._key_interval_ms = dts - gop_start
            self._keyframes += 1
            self._gop_start = dts
        elif gop_start is None:
            self._gop_start = dts
        pts = unit.pts
        max_pts = self._max_pts
        if pts != dts or (max_pts is not None and pts < max_pts):
            self._last_reorder_at = now
        if max_pts is None or pts > max_pts:
            self._max_pts = pts

    def on_units(self, units: Iterable[MediaUnit], now: float) -> None:
        for unit in units:
            self.on_unit(unit, now)

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._samples and self._samples[0][_AT] <= horizon:
            self._samples.popleft()

    # -------------------------------------------------------------------------------- metrics

    def _span(self, now: float) -> float:
        if self._first_at is None:
            return 0.0
        return min(self.window, now - self._first_at)

    def bitrate_kbps(self, now: float, kind: Kind | None = None) -> float:
        """Bits per second / 1000 over the window (``kind=None``: audio + video)."""
        self._prune(now)
        span = self._span(now)
        if span <= 0:
            return 0.0
        size = sum(s[_SIZE] for s in self._samples if kind is None or s[_KIND] is kind)
        return size * 8 / span / 1000

    def fps(self, now: float) -> float | None:
        """Video frames per second from the dts of the frames in the window."""
        self._prune(now)
        dts = [s[_DTS] for s in self._samples if s[_KIND] is Kind.VIDEO]
        if len(dts) < 2 or max(dts) <= min(dts):
            return None
        return (len(dts) - 1) * 1000 / (max(dts) - min(dts))

    def keyframe_interval(self) -> float | None:
        """Seconds between the last two keyframes, or the current GOP if it is longer."""
        interval = self._key_interval_ms
        if self._gop_start is not None and self._last_video_dts is not None:
            running = self._last_video_dts - self._gop_start
            limit = MAX_KEYFRAME_INTERVAL_S * 1000 + KEYFRAME_TOLERANCE_MS
            if (interval is None and running > limit) or (
                interval is not None and running > interval
            ):
                interval = running
        return None if interval is None else interval / 1000

    def b_frames(self, now: float) -> bool:
        """Whether reordered frames (pts ≠ dts) arrived within the window."""
        return self._last_reorder_at is not None and now - self._last_reorder_at < self.window

    def av_skew_ms(self) -> int | None:
        """Latest audio dts minus latest video dts (positive: audio ahead)."""
        if self._last_audio_dts is None or self._last_video_dts is None:
            return None
        return self._last_audio_dts - self._last_video_dts

    # ---------------------------------------------------------------------------------- hints

    def hints(self, now: float) -> list[str]:
        """Plain-language advice for settings that will hurt viewers."""
        hints: list[str] = []
        interval = self.keyframe_interval()
        if interval is not None and interval * 1000 > (
            MAX_KEYFRAME_INTERVAL_S * 1000 + KEYFRAME_TOLERANCE_MS
        ):
            what = "keyframe interval" if self._keyframes else "no keyframe yet after"
            hints.append(
                f"{what} {interval:.1f} s: set it to 1-2 s in OBS (Output > Keyframe Interval)"
            )
        if self.b_frames(now):
            hints.append(
                "B-frames present: the WebRTC bridge must transcode video; set OBS x264 "
                "'bframes=0' / profile baseline to avoid it"
            )
        skew = self.av_skew_ms()
        if skew is not None and abs(skew) > MAX_AV_SKEW_MS:
            ahead = "audio" if skew > 0 else "video"
            hints.append(
                f"audio/video timestamps {abs(skew)} ms apart ({ahead} ahead): viewers will see "
                "them out of sync; check OBS Advanced Audio Properties > Sync Offset and "
                "encoder overload"
            )
        video_kbps = self.bitrate_kbps(now, Kind.VIDEO)
        if video_kbps > MAX_VIDEO_BITRATE_KBPS:
            hints.append(
                f"video bitrate {video_kbps:.0f} kbps is very high for WebRTC viewers: set OBS "
                "Output > Bitrate to 2500-6000 kbps"
            )
        config = self.video_config
        if config is not None and config.width * config.height > MAX_PIXELS:
            hints.append(
                f"resolution {config.width}x{config.height} is above 1080p: set OBS Video > "
                "Output (Scaled) Resolution to 1920x1080 or 1280x720"
            )
        sps = self._sps
        if sps is not None and (
            sps.profile_idc not in BROWSER_PROFILES
            or sps.chroma_format_idc != 1
            or sps.bit_depth_luma != 8
        ):
            hints.append(
                f"H.264 {sps.profile_name} ({sps.chroma_format}, {sps.bit_depth_luma}-bit) "
                "cannot be decoded by browsers: set OBS Advanced > Color Format to NV12 and the "
                "encoder profile to high, main or baseline"
            )
        if sps is not None and not sps.frame_mbs_only:
            hints.append("interlaced video: browsers show combing; disable interlacing")
        fps = self.fps(now)
        if (
            fps is not None
            and fps < MIN_FPS
            and self._first_video_at is not None
            and now - self._first_video_at >= MIN_SPAN_FOR_FPS_S
        ):
            hints.append(
                f"frame rate {fps:.1f} fps is low: the encoder may be overloaded; lower OBS "
                "Output resolution or use a hardware encoder"
            )
        if (
            self.audio_frames == 0
            and self._first_video_at is not None
            and now - self._first_video_at >= NO_AUDIO_AFTER_S
        ):
            hints.append("no audio received: check the OBS audio mixer and Output > Audio Track")
        return hints

    # ------------------------------------------------------------------------------- snapshot

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything above as a JSON-able dict."""
        video: dict[str, Any] | None = None
        if self.video_config is not None or self.video_frames:
            config = self.video_config
            sps = self._sps
            fps = self.fps(now)
            interval = self.keyframe_interval()
            video = {
                "codec": config.codec if config else None,
                "width": config.width if config else None,
                "height": config.height if config else None,
                "resolution": f"{config.width}x{config.height}" if config else None,
                "profile": sps.profile_name if sps else None,
                "level": sps.level_name if sps else None,
                "profile_level": f"{sps.profile_name} {sps.level_name}" if sps else None,
                "profile_level_id": config.profile_level_id if config else None,
                "chroma_format": sps.chroma_format if sps else None,
                "bit_depth": sps.bit_depth_luma if sps else None,
                "fps": None if fps is None else round(fps, 2),
                "bitrate_kbps": round(self.bitrate_kbps(now, Kind.VIDEO), 1),
                "keyframe_interval_s": None if interval is None else round(interval, 3),
                "b_frames": self.b_frames(now),
                "frames": self.video_frames,
            }
        audio: dict[str, Any] | None = None
        if self.audio_config is not None or self.audio_frames:
            aconf = self.audio_config
            audio = {
                "codec": aconf.codec if aconf else None,
                "profile": object_type_name(aconf.object_type)
                if aconf and aconf.codec == "aac"
                else None,
                "sample_rate": aconf.sample_rate if aconf else None,
                "channels": aconf.channels if aconf else None,
                "bitrate_kbps": round(self.bitrate_kbps(now, Kind.AUDIO), 1),
                "frames": self.audio_frames,
            }
        return {
            "video": video,
            "audio": audio,
            "bitrate_kbps": round(self.bitrate_kbps(now), 1),
            "av_skew_ms": self.av_skew_ms(),
            "encoder": self.encoder,
            "hints": self.hints(now),
        }
