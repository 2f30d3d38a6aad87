"""Test media made on the spot with the ffmpeg CLI, and helpers to push it over RTMP."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from ingest.media.codecs import h264

MEDIA_DIR = Path("/tmp/ingest-test-media")
"""Generated test media, cached across tests and runs (made once per distinct file name)."""


def make_flv(
    path: Path,
    *,
    seconds: float = 2.0,
    size: str = "320x240",
    fps: int = 30,
    gop: int = 30,
    bframes: int = 0,
    profile: str = "high",
    tone: int = 440,
    video_filter: str = "",
    audio: str | None = None,
    level: str | None = None,
    tune: str | None = None,
) -> Path:
    """An H.264 + AAC FLV file of a test pattern and a sine tone (cached: made once per path).

    ``video_filter`` is appended to the ``testsrc2`` source; ``audio`` replaces the sine source.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    video = f"testsrc2=size={size}:rate={fps}" + (f",{video_filter}" if video_filter else "")
    cmd = [
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", video,
        "-f", "lavfi", "-i", audio or f"sine=frequency={tone}:sample_rate=44100",
        "-t", str(seconds),
        # ultrafast turns off 8x8 transforms and CABAC, which would make "high" come out Main.
        "-c:v", "libx264", "-preset", "ultrafast" if profile == "baseline" else "superfast",
        "-profile:v", profile, *(["-level:v", level] if level else []),
        *(["-tune", tune] if tune else []),
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", str(bframes),
        "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k",
    ]  # fmt: skip
    tmp = path.with_suffix(".tmp.flv")  # a crashed run never leaves a half-written cache entry
    subprocess.run([*cmd, str(tmp)], check=True, timeout=120)
    tmp.rename(path)
    return path


async def push(
    url: str,
    path: Path,
    *,
    realtime: bool = False,
    loop: bool = False,
    extra: list[str] | None = None,
) -> asyncio.subprocess.Process:
    """Start `ffmpeg -c copy` pushing `path` to `url` (returns the running process)."""
    args = ["ffmpeg", "-v", "info", "-nostdin"]
    if realtime:
        args.append("-re")
    if loop:
        args += ["-stream_loop", "-1"]
    args += ["-i", str(path), "-c", "copy", *(extra or []), "-f", "flv", url]
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


async def finish(proc: asyncio.subprocess.Process, within: float = 30) -> tuple[int, str]:
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), within)
    code = await asyncio.wait_for(proc.wait(), within)
    return code, err.decode(errors="replace")


@dataclass(frozen=True)
class Expected:
    kind: str
    dts: int
    pts: int
    keyframe: bool
    payload: tuple[bytes, ...]  # video: NAL units (no SPS/PPS/AUD/filler); audio: the raw frame


SKIP_NALS = {h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD, h264.NAL_FILLER}


def video_nals(annexb_or_avcc: list[bytes]) -> tuple[bytes, ...]:
    return tuple(n for n in annexb_or_avcc if h264.nal_type(n) not in SKIP_NALS)


def expected_from_file(path: Path, offset_ms: int = 0) -> list[Expected]:
    """What libavformat's own FLV demuxer reads from the file: the independent oracle."""
    out: list[Expected] = []
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size == 0:
                continue
            tb = packet.time_base
            assert packet.dts is not None
            assert packet.pts is not None
            dts = round(packet.dts * tb * 1000) + offset_ms
            pts = round(packet.pts * tb * 1000) + offset_ms
            data = bytes(packet)
            if packet.stream.type == "video":
                out.append(
                    Expected(
                        "video", dts, pts, packet.is_keyframe, video_nals(h264.split_avcc(data, 4))
                    )
                )
            else:
                out.append(Expected("audio", dts, pts, True, (data,)))
    return out


def got_from_unit(unit: Any) -> Expected:
    if unit.kind.value == "video":
        payload = video_nals(h264.split_annexb(unit.data))
    else:
        payload = (unit.data,)
    return Expected(unit.kind.value, unit.dts, unit.pts, unit.keyframe, payload)
