"""A real FLV written by the ffmpeg CLI, parsed by our reader and decoded by PyAV."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import pytest

from ingest.flv import file as flv
from ingest.flv.tags import TagReader
from ingest.media.codecs import h264
from ingest.media.health import Health
from ingest.media.units import Kind, MediaUnit

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed"),
]


@pytest.fixture(scope="module")
def ffmpeg_flv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ffmpeg") / "out.flv"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-bf",
            "2",
            "-g",
            "30",
            "-preset",
            "veryfast",
            "-c:a",
            "aac",
            str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


def test_ffmpeg_flv(ffmpeg_flv: Path) -> None:
    reader = TagReader()
    health = Health()
    video: list[MediaUnit] = []
    audio: list[MediaUnit] = []
    tags = flv.read_flv(str(ffmpeg_flv))
    for tag in tags:
        if tag.kind is None:
            continue
        units = reader.receive(tag.kind, tag.timestamp, tag.body)
        for change in reader.pop_changes():
            health.on_config(change.config)
        health.on_units(units, tag.timestamp / 1000)
        (video if tag.kind is Kind.VIDEO else audio).extend(units)

    config = reader.video_config
    assert config is not None
    assert (config.width, config.height) == (640, 360)
    assert config.profile == 100
    assert h264.profile_name(config.profile, config.profile_compat) == "High"
    assert reader.has_b_frames
    assert any(u.pts != u.dts for u in video)
    assert reader.audio_config is not None
    assert reader.audio_config.sample_rate == 44100
    assert reader.audio_config.channels == 1
    assert len(video) == 60
    assert 80 <= len(audio) <= 90  # 2 s of 1024-sample frames at 44.1 kHz

    # Same timestamps as FFmpeg's own demuxer reports.
    with av.open(str(ffmpeg_flv), mode="r") as container:
        demuxed = [(p.dts, p.pts) for p in container.demux(video=0) if p.size]
    assert [(u.dts, u.pts) for u in video] == demuxed

    ctx = av.CodecContext.create("h264", "r")
    frames = []
    for unit in video:
        frames += ctx.decode(av.Packet(unit.data))
    frames += ctx.decode(None)
    assert len(frames) == 60
    assert {(f.width, f.height) for f in frames} == {(640, 360)}

    snap = health.snapshot(2.0)
    v = snap["video"]
    assert isinstance(v, dict)
    assert v["b_frames"] is True
    assert v["keyframe_interval_s"] == 1.0
    assert v["profile"] == "High"
    assert any(h.startswith("B-frames present") for h in snap["hints"])
