"""Real RTMP clients (ffmpeg CLI, libavformat through PyAV, raw sockets) against RTMPServer."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest

from ingest.errors import IngestError, NotFoundError, PermissionDeniedError
from ingest.rtmp.server import PublishRequest, RTMPServer
from tests.unit.rtmp.client import Client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI"),
]

TIMEOUT = 30.0
SECRET_KEY = "eyJhbGciOiJIUzI1NiJ9.secret-stream-key-material.signature-xyz123"


# -- a recording PublishHandler ---------------------------------------------------------------


@dataclass
class Session:
    request: PublishRequest
    disconnect: Callable[[str], None]
    audio: list[tuple[int, bytes]] = field(default_factory=list)
    video: list[tuple[int, bytes]] = field(default_factory=list)
    metadata: list[dict[str, object]] = field(default_factory=list)
    first_media: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = "not closed"

    def on_metadata(self, metadata: dict[str, object]) -> None:
        self.metadata.append(metadata)

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        self.audio.append((timestamp, payload))
        self.first_media.set()

    def on_video(self, timestamp: int, payload: bytes) -> None:
        self.video.append((timestamp, payload))
        self.first_media.set()

    async def on_close(self, reason: str | None) -> None:
        self.reason = reason
        self.closed.set()


class Recorder:
    def __init__(self) -> None:
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.requests: list[PublishRequest] = []
        self.refuse: IngestError | None = None

    async def on_publish(
        self, request: PublishRequest, disconnect: Callable[[str], None]
    ) -> Session:
        self.requests.append(request)
        if self.refuse is not None and not request.stream_key.startswith("ok"):
            raise self.refuse
        session = Session(request, disconnect)
        await self.sessions.put(session)
        return session

    async def next_session(self) -> Session:
        return await asyncio.wait_for(self.sessions.get(), TIMEOUT)


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(recorder: Recorder) -> AsyncIterator[RTMPServer]:
    srv = RTMPServer(recorder, "127.0.0.1", 0, reject_delay=(0.2, 0.3))
    await srv.start()
    yield srv
    await srv.stop()


# -- FLV file -------------------------------------------------------------------------------


def flv_tags(path: Path) -> list[tuple[int, int, bytes]]:
    """(tag type, timestamp, body) of every tag: 9-byte header + PreviousTagSize0, then tags."""
    data = path.read_bytes()
    assert data[:3] == b"FLV"
    pos = int.from_bytes(data[5:9], "big") + 4
    tags = []
    while pos + 11 <= len(data):
        kind = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        tags.append((kind, ts, data[pos + 11 : pos + 11 + size]))
        pos += 11 + size + 4
    return tags


@pytest.fixture(scope="module")
def flv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rtmp") / "av.flv"
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", "2", "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-f", "flv", str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


def expected_media(
    path: Path, offset: int = 0
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    tags = flv_tags(path)
    audio = [(ts + offset, body) for kind, ts, body in tags if kind == 8]
    video = [(ts + offset, body) for kind, ts, body in tags if kind == 9]
    return audio, video


async def push(url: str, path: Path, *extra: str, realtime: bool = False) -> tuple[int, str]:
    args = ["ffmpeg", "-nostdin", "-loglevel", "info"]
    if realtime:
        args.append("-re")
    args += ["-i", str(path), "-c", "copy", *extra, "-f", "flv", url]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, stderr.decode(errors="replace")


# -- ffmpeg CLI -----------------------------------------------------------------------------


async def test_ffmpeg_push_is_received_exactly(
    server: RTMPServer, recorder: Recorder, flv_file: Path
) -> None:
    url = f"rtmp://127.0.0.1:{server.port}/app/{SECRET_KEY}"
    (code, stderr), session = await asyncio.gather(push(url, flv_file), recorder.next_session())
    assert code == 0, stderr[-2000:]
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    assert session.reason is None  # clean unpublish
    assert session.request.app == "app"
    assert session.request.stream_key == SECRET_KEY
    assert session.request.peer.startswith("127.0.0.1:")
    audio, video = expected_media(flv_file)
    assert session.video == video
    assert session.audio == audio
    assert session.metadata
    assert session.metadata[0]["width"] == 320.0


async def test_ffmpeg_extended_timestamps(
    server: RTMPServer, recorder: Recorder, flv_file: Path, tmp_path: Path
) -> None:
    """Timestamps starting just below 0xFFFFFF ms (16777.215 s) and crossing it.

    ffmpeg's FLV muxer writes the sequence headers at 0 and shifts the media by its own
    start delay, so the reference is the same remux written to a file by the same muxer.
    """
    offset = ["-output_ts_offset", "16777.0"]
    reference = tmp_path / "offset.flv"
    remux = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(flv_file), "-c", "copy",
        *offset, "-f", "flv", str(reference),
    )  # fmt: skip
    assert await asyncio.wait_for(remux.wait(), TIMEOUT) == 0
    url = f"rtmp://127.0.0.1:{server.port}/app/key"
    (code, stderr), session = await asyncio.gather(
        push(url, flv_file, *offset), recorder.next_session()
    )
    assert code == 0, stderr[-2000:]
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    audio, video = expected_media(reference)
    media_stamps = [ts for ts, body in video if body[1:2] == b"\x01"]  # AVC NALU packets
    assert media_stamps[0] < 0xFFFFFF < media_stamps[-1]
    assert media_stamps == sorted(media_stamps)
    original = [ts for ts, body in expected_media(flv_file)[1] if body[1:2] == b"\x01"]
    shifts = {new - old for new, old in zip(media_stamps, original, strict=True)}
    assert len(shifts) == 1  # one constant offset: no drift across the 24-bit boundary
    assert 16_776_900 <= shifts.pop() <= 16_777_000
    assert session.video == video
    assert session.audio == audio


async def test_refused_publish(
    server: RTMPServer, recorder: Recorder, flv_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ingest.rtmp")
    recorder.refuse = PermissionDeniedError("you may not publish to this call")
    url = f"rtmp://127.0.0.1:{server.port}/app/{SECRET_KEY}"
    start = time.monotonic()
    code, stderr = await push(url, flv_file)
    assert code != 0
    assert time.monotonic() - start < 10
    assert "you may not publish to this call" in stderr
    assert recorder.requests[0].stream_key == SECRET_KEY
    assert SECRET_KEY not in caplog.text
    assert "refusing publish" in caplog.text


async def test_garbage_connection_does_not_disturb_a_publisher(
    server: RTMPServer, recorder: Recorder, flv_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"rtmp://127.0.0.1:{server.port}/app/key"
    pusher = asyncio.create_task(push(url, flv_file, realtime=True))
    session = await recorder.next_session()
    await asyncio.wait_for(session.first_media.wait(), TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x03" + bytes(1536) + bytes(1536) + b"\xff" * 64)  # handshake, then garbage
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)  # read to EOF: the server closed it
    assert len(rest) == 1 + 2 * 1536  # the handshake answer, nothing more
    writer.close()
    code, stderr = await pusher
    assert code == 0, stderr[-2000:]
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    assert session.reason is None
    audio, video = expected_media(flv_file)
    assert session.video == video
    assert session.audio == audio
    assert caplog.text.count("protocol error") + caplog.text.count("closing 127.0.0.1") >= 1


# -- libavformat through PyAV ---------------------------------------------------------------


def pyav_push(url: str, frames: int = 30) -> None:
    """Encode H.264 + AAC from numpy frames and push them with libavformat's RTMP client."""
    import av
    import numpy as np

    with av.open(url, "w", format="flv") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.options = {"tune": "zerolatency", "preset": "ultrafast"}
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "mono"
        samples = 1024
        for i in range(frames):
            img = np.full((240, 320, 3), (i * 8) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 30)
            for packet in video.encode(frame):
                out.mux(packet)
            for k in range(2):
                n = i * 2 + k
                t = (np.arange(samples) + n * samples) / 44100
                pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
                aframe.sample_rate = 44100
                aframe.pts = n * samples
                aframe.time_base = Fraction(1, 44100)
                for packet in audio.encode(aframe):
                    out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)


async def test_pyav_libavformat_push(server: RTMPServer, recorder: Recorder) -> None:
    """PyAV's muxing to a network URL keeps the GIL while libavformat blocks on the socket, so
    a thread of this process would deadlock with the server's event loop: push from a child
    process instead (same PyAV, same libavformat)."""
    url = f"rtmp://127.0.0.1:{server.port}/live/pyav-key"
    script = f"from tests.e2e.test_rtmp_clients import pyav_push; pyav_push({url!r})"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=str(Path(__file__).parents[2]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    session = await recorder.next_session()
    _, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    assert session.reason is None
    assert (session.request.app, session.request.stream_key) == ("live", "pyav-key")
    assert session.video[0][1][:2] == b"\x17\x00"  # AVC sequence header first
    assert session.audio[0][1][:2] == b"\xaf\x00"  # AAC AudioSpecificConfig first
    assert len(session.video) >= 30
    assert len(session.audio) >= 50
    stamps = [ts for ts, _ in session.video]
    assert stamps == sorted(stamps)


# -- timeouts, limits, kicks (raw sockets with the test client) ------------------------------


async def run_client(
    client: Client,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    until: Callable[[], bool],
) -> None:
    while not until():
        out = client.data_to_send()
        if out:
            writer.write(out)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert data, "server closed the connection"
        client.receive_data(data)


async def publish_with_client(
    port: int, key: str = "k"
) -> tuple[Client, asyncio.StreamReader, asyncio.StreamWriter]:
    client = Client()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client.connect()
    client.command("createStream")
    client.publish(1, key)

    def started() -> bool:
        return any(
            c.name == "onStatus" and c.arguments[0]["code"] == "NetStream.Publish.Start"  # type: ignore[index]
            for c in client.commands()
        )

    await run_client(client, reader, writer, started)
    return client, reader, writer


async def until_eof(reader: asyncio.StreamReader) -> None:
    while await asyncio.wait_for(reader.read(65536), TIMEOUT):
        pass


async def test_handshake_timeout(recorder: Recorder) -> None:
    srv = RTMPServer(recorder, "127.0.0.1", 0)
    srv.handshake_timeout = 0.3
    await srv.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"\x03")
        await until_eof(reader)
        writer.close()
    finally:
        await srv.stop()


async def test_idle_and_first_media_timeouts(recorder: Recorder) -> None:
    srv = RTMPServer(recorder, "127.0.0.1", 0, idle_timeout=0.3, first_media_timeout=0.5)
    await srv.start()
    try:
        # connected but silent: idle timeout
        client = Client()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        await run_client(client, reader, writer, lambda: bool(client.s0s1s2))
        writer.write(client.data_to_send())
        await until_eof(reader)
        writer.close()
        # publishing but no media: first-media timeout, the session learns why
        client, reader, writer = await publish_with_client(srv.port)
        session = await recorder.next_session()
        await until_eof(reader)
        await asyncio.wait_for(session.closed.wait(), TIMEOUT)
        assert session.reason == "no media within 0.5 s"
        writer.close()
        # media, then silence: idle timeout
        client, reader, writer = await publish_with_client(srv.port)
        session = await recorder.next_session()
        client.video(1, 0, b"\x17\x00")
        writer.write(client.data_to_send())
        await until_eof(reader)
        await asyncio.wait_for(session.closed.wait(), TIMEOUT)
        assert session.video == [(0, b"\x17\x00")]
        assert session.reason is not None
        assert "idle timeout" in session.reason
        writer.close()
    finally:
        await srv.stop()


async def test_max_connections(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    srv = RTMPServer(recorder, "127.0.0.1", 0, max_connections=1)
    await srv.start()
    try:
        first_reader, first = await asyncio.open_connection("127.0.0.1", srv.port)
        first.write(b"\x03" + bytes(1536))
        await asyncio.wait_for(first_reader.readexactly(1 + 2 * 1536), TIMEOUT)  # it is served
        assert srv.connections == 1
        reader, second = await asyncio.open_connection("127.0.0.1", srv.port)
        second.write(b"\x03" + bytes(1536))
        try:
            data = await asyncio.wait_for(reader.read(), TIMEOUT)  # aborted: EOF or reset
        except ConnectionError:
            data = b""
        assert data == b""
        assert "refusing 127.0.0.1" in caplog.text
        second.close()
        first.close()
    finally:
        await srv.stop()


async def test_kick_and_stop(server: RTMPServer, recorder: Recorder) -> None:
    client, reader, writer = await publish_with_client(server.port)
    session = await recorder.next_session()
    session.disconnect("kicked by the host")
    await until_eof(reader)
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    assert session.reason == "kicked by the host"
    client.receive_data(b"")
    writer.close()
    # stop() closes open publishers and awaits their on_close
    client, reader, writer = await publish_with_client(server.port, "second")
    session = await recorder.next_session()
    await server.stop()
    assert session.closed.is_set()
    assert session.reason == "server stopping"
    writer.close()


async def test_not_found_maps_to_bad_name(server: RTMPServer, recorder: Recorder) -> None:
    recorder.refuse = NotFoundError("no such call")
    client = Client()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client.connect()
    client.command("createStream")
    client.publish(1, "k")

    def answered() -> bool:
        return any(c.name == "onStatus" for c in client.commands())

    await run_client(client, reader, writer, answered)
    status = next(c for c in client.commands() if c.name == "onStatus").arguments[0]
    assert status == {
        "level": "error",
        "code": "NetStream.Publish.BadName",
        "description": "no such call",
    }
    await until_eof(reader)
    writer.close()


async def test_refusal_delay_does_not_block_other_connections(recorder: Recorder) -> None:
    srv = RTMPServer(recorder, "127.0.0.1", 0, reject_delay=(2.0, 2.0))
    await srv.start()
    try:
        recorder.refuse = PermissionDeniedError("no")
        refused = Client()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        refused.connect()
        refused.command("createStream")
        refused.publish(1, "bad-key")
        writer.write(refused.data_to_send())
        refused.receive_data(await asyncio.wait_for(reader.readexactly(1 + 2 * 1536), TIMEOUT))
        writer.write(refused.data_to_send())  # C2 + the queued commands
        while len(recorder.requests) < 1:  # the refusal delay has started
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert data
            refused.receive_data(data)
        start = time.monotonic()
        _, _, ok_writer = await publish_with_client(srv.port, "ok-key")
        assert time.monotonic() - start < 1.5  # served while the other one waits
        assert not any(c.name == "onStatus" for c in refused.commands())
        await until_eof(reader)
        writer.close()
        ok_writer.close()
    finally:
        await srv.stop()
