"""``ingest bench compare`` / ``scale``: this server against a C baseline, same input, same run.

Both systems get the same generated input (by default 1080p30 6 Mbit/s H.264 High without
B-frames, 2 s GOP, stereo AAC 160 kbit/s), pushed by the ffmpeg CLI like OBS would
(``-re -stream_loop -1 -c copy``), and do the same job, one viewer per stream:

* **ingest** (this server, ``ingest serve`` in its own process): RTMP in, H.264 passthrough,
  AAC → Opus 20 ms, WebRTC out (ICE, DTLS-SRTP, RTCP, NACK history) to WHEP viewers;
* **ffmpeg** (the baseline, one ``ffmpeg -listen 1`` process per stream): RTMP in, H.264 copy,
  AAC → libopus 20 ms (same bit rate), SRTP (AES_CM_128_HMAC_SHA1_80, a static key) over plain
  RTP/UDP to a local sink; fan-out through one ffmpeg with the ``tee`` muxer (Opus encoded once,
  RTP + SRTP per viewer, as our server does).

Viewers (:mod:`ingest.bench.probe`) run in processes apart from both: they count RTP packets,
video frames (marker bits) and sequence gaps, and never decode. CPU is each system's server
processes' CPU time (``/proc/<pid>/stat``: user + system) over wall time, in % of one core;
memory is the PSS from ``/proc/<pid>/smaps_rollup``. Measurements interleave the two
systems (ours, baseline, ours, baseline, …) so that a busy host hurts both alike; ratios are
taken within one run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .child import JsonChild

# -- the plan ----------------------------------------------------------------------------------

WIDTH, HEIGHT, FPS, GOP_S = 1920, 1080, 30, 2
VIDEO_BIT_RATE = "6M"
AUDIO_BIT_RATE = "160k"
MEDIA_SECONDS = 6
OPUS_BIT_RATE = 96_000  # what our AacToOpus uses (ingest.media.codecs.opus.OPUS_BIT_RATE_DEFAULT)
SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"

COMPARE_RUNS = 3
"""Interleaved runs of each system in ``compare`` (medians over them)."""
WARMUP_S = 2.0
"""After every viewer has its first packet, before measuring."""
WINDOW_S = 6.0
"""One measurement window."""
SCALE_STREAMS = (1, 2, 4, 8, 12, 16)
"""``scale``: concurrent streams (one viewer each), until one system falls behind."""
FANOUT_VIEWERS = (1, 5, 10, 20)
"""``scale``: viewers of one stream."""
MIN_FPS = 29.0
"""A viewer below this many video frames per second (the input has 30) has fallen behind."""
PROBE_PROCESSES = 2
"""Viewer processes (viewers are spread over them round robin)."""
STEADY_TIMEOUT = 10.0
"""After the warm-up, at most this long for every viewer to be at the live edge (no viewer over
``FPS + 2`` frames in a second: the GOP a viewer starts with is sent faster than real time)."""
START_TIMEOUT = 40.0
"""For a server to answer, a viewer to get its first packet."""

TARGET_RATIO_ONE_STREAM = 1.0
"""CPU per stream, ours / baseline, at one stream with one viewer: at most this."""
TARGET_RATIO_SCALE = 0.7
"""CPU per stream, ours / baseline, at :data:`TARGET_SCALE_STREAMS` streams: at most this."""
TARGET_SCALE_STREAMS = 8
TARGET_RATIO_PER_VIEWER = 0.8
"""Extra CPU per viewer, ours / the ``tee`` baseline's: at most this."""

DIFFERENCES = (
    "ingest: one Python process for every stream (asyncio; HTTP API, RTMP, SFU); ICE (STUN "
    "consent checks), a DTLS handshake per viewer, RTCP sender reports, a NACK/RTX history of "
    "128 units per viewer, a GOP cache for late joiners, viewers authenticated by token over "
    "WHEP. SRTP AEAD_AES_128_GCM (what DTLS negotiates with aiortc and with Chrome); a frame's "
    "packets of one size leave in one sendmsg (UDP GSO).",
    "ffmpeg: one C process per stream (`ffmpeg -listen 1`), no ICE, no DTLS (a static SRTP key "
    "given on the command line), RTCP sender reports only, no retransmission, no GOP cache, no "
    "authentication; its viewers are plain UDP sockets. SRTP AES_CM_128_HMAC_SHA1_80 (ffmpeg's "
    "SRTP has no GCM suite), one sendto per packet. Fan-out: one ffmpeg, `tee` muxer.",
    "Both: H.264 copied (no decode), AAC decoded and encoded to Opus 96 kbit/s in 20 ms "
    "frames (libopus, complexity 10, the same settings), SRTP per viewer, RTP over loopback UDP.",
)


@dataclass(frozen=True)
class Plan:
    """How much to measure (the defaults make the README's table; tests use a small plan)."""

    runs: int = COMPARE_RUNS
    warmup: float = WARMUP_S
    window: float = WINDOW_S
    streams: tuple[int, ...] = SCALE_STREAMS
    fanout: tuple[int, ...] = FANOUT_VIEWERS
    width: int = WIDTH
    height: int = HEIGHT
    video_bit_rate: str = VIDEO_BIT_RATE
    min_fps: float = MIN_FPS


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measurement window of one system."""

    system: str  # "ingest" or "ffmpeg"
    streams: int
    viewers: int  # per stream
    cpu: float  # % of one core, all of the system's server processes
    rss_mb: float
    fps: list[float]  # video frames per second, per viewer
    lost: int  # RTP sequence numbers never received, all viewers
    load: float  # 1-minute load average at the end of the window
    failed: str = ""  # why the system could not be measured (it did not start in time)

    @property
    def cpu_per_stream(self) -> float:
        return self.cpu / self.streams

    @property
    def min_fps(self) -> float:
        return min(self.fps) if self.fps else 0.0

    def ok(self, min_fps: float = MIN_FPS) -> bool:
        """Measured, nothing lost, every viewer at full frame rate."""
        return not self.failed and self.lost == 0 and self.min_fps >= min_fps and bool(self.fps)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_pss_mb(pid: int) -> float:
    """Proportional set size: resident memory with shared pages (libraries loaded by several
    ffmpeg processes) divided among the processes that share them, so sums are fair."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_media(
    directory: Path,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    video_bit_rate: str = VIDEO_BIT_RATE,
    seconds: float = MEDIA_SECONDS,
    gop_frames: int = FPS * GOP_S,
    b_frames: int = 0,
    name: str = "bench.flv",
) -> Path:
    """H.264 High at ``FPS`` (a moving, noisy test pattern that needs the bits), a fixed GOP,
    ``b_frames`` B-frames, stereo AAC 48 kHz 160 kbit/s: an FLV file made with the ffmpeg CLI."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the benchmarks need the ffmpeg CLI (apt-get install ffmpeg)")
    path = directory / name
    cmd = [
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={FPS},noise=alls=10:allf=t",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", f"{seconds:.4f}",
        "-c:v", "libx264", "-preset", "superfast", "-profile:v", "high", "-bf", str(b_frames),
        "-g", str(gop_frames), "-keyint_min", str(gop_frames), "-sc_threshold", "0",
        "-b:v", video_bit_rate, "-maxrate", video_bit_rate, "-bufsize", video_bit_rate,
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", AUDIO_BIT_RATE, str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether some process listens on TCP ``port`` (without connecting to it: ffmpeg's RTMP
    listener accepts exactly one connection)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                return True
    return False


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _push(media: Path, url: str) -> asyncio.subprocess.Process:
    """The ffmpeg CLI pushing ``media`` in a loop at its real rate, like OBS."""
    return await _spawn(
        "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i", str(media),
        "-c", "copy", "-f", "flv", url,
    )  # fmt: skip


class _ProbeProcess(JsonChild):
    """One viewer process (:mod:`ingest.bench.probe`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__(proc, START_TIMEOUT)
        self.pending = 0  # WHEP viewers asked for, not yet added

    @classmethod
    async def start(cls) -> _ProbeProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest.bench.probe",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        probe = cls(proc)
        await probe.expect("ready")
        return probe

    async def send(self, **message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def ask(self, event: str, **message: Any) -> dict[str, Any]:
        await self.send(**message)
        return await self.expect(event)


class _Probes:
    """The viewer processes; viewers go to them round robin."""

    def __init__(self, processes: list[_ProbeProcess]) -> None:
        self.processes = processes
        self._next = 0

    def pick(self) -> _ProbeProcess:
        probe = self.processes[self._next % len(self.processes)]
        self._next += 1
        return probe

    async def whep(self, url: str, token: str) -> None:
        probe = self.pick()
        probe.pending += 1
        await probe.send(cmd="whep", url=url, token=token)

    async def all_added(self) -> None:
        for probe in self.processes:
            while probe.pending:
                await probe.expect("added")
                probe.pending -= 1

    async def stats(self) -> list[list[int]]:
        rows: list[list[int]] = []
        for probe in self.processes:
            rows += (await probe.ask("stats", cmd="stats"))["viewers"]
        return rows

    async def close(self) -> None:
        for probe in self.processes:
            probe.pending = 0
            await probe.ask("closed", cmd="close")
        self._next = 0

    async def start(self) -> None:
        for _ in range(PROBE_PROCESSES):
            self.processes.append(await _ProbeProcess.start())

    async def stop(self) -> None:
        processes, self.processes = self.processes, []
        for p in processes:
            await p.stop()

    async def restart(self) -> None:
        """Fresh viewer processes (after a failed step: no stale answers in the pipes)."""
        await self.stop()
        await self.start()
        self._next = 0


@contextlib.asynccontextmanager
async def _probes() -> AsyncIterator[_Probes]:
    probes = _Probes([])
    try:
        await probes.start()
        yield probes
    finally:
        await probes.stop()


async def _measure(
    system: str, streams: int, viewers: int, pids: Sequence[int], probes: _Probes, plan: Plan
) -> Sample:
    """Warm up until every viewer is at the live edge, then CPU, memory and what the viewers
    received over one window."""
    await asyncio.sleep(plan.warmup)
    deadline = time.monotonic() + STEADY_TIMEOUT
    before = await probes.stats()
    while time.monotonic() < deadline:  # a viewer still draining its start backlog: wait
        await asyncio.sleep(1.0)
        now = await probes.stats()
        if all(b[0] - a[0] <= FPS + 2 for a, b in zip(before, now, strict=True)):
            break
        before = now
    before = await probes.stats()
    cpu0 = sum(proc_cpu_seconds(p) for p in pids)
    wall0 = time.perf_counter()
    await asyncio.sleep(plan.window)
    cpu1 = sum(proc_cpu_seconds(p) for p in pids)
    wall = time.perf_counter() - wall0
    after = await probes.stats()
    rss = sum(proc_pss_mb(p) for p in pids)
    if len(before) != len(after) or len(after) != streams * viewers:
        raise RuntimeError(f"{len(after)} viewers counted, {streams * viewers} expected")
    fps = [(b[0] - a[0]) / wall for a, b in zip(before, after, strict=True)]
    lost = sum(b[3] - a[3] for a, b in zip(before, after, strict=True))
    return Sample(
        system, streams, viewers, (cpu1 - cpu0) / wall * 100, rss, fps, lost, os.getloadavg()[0]
    )


# -- this server -------------------------------------------------------------------------------

BENCH_KEY = "benchkey"
BENCH_SECRET = "bench-secret-not-for-production-0123456789abcdef"
CALL_TYPE = "default"


@dataclass(frozen=True)
class _Stream:
    rtmp: str  # address/stream key
    whep: str
    token: str


async def setup_streams(base: str, count: int) -> list[_Stream]:
    """The users and calls of ``count`` streams on a server at ``base`` (one host each), through
    :mod:`ingest.client`."""
    from ingest.calls.wire import CallRequest, MemberRequest, UserRequest
    from ingest.client import AsyncClient, create_token

    out: list[_Stream] = []
    async with AsyncClient(base, BENCH_KEY, secret=BENCH_SECRET) as api:
        await api.upsert_users(*(UserRequest(id=f"host{i}") for i in range(count)))
        for i in range(count):
            host, call_id = f"host{i}", f"bench{i}"
            request = CallRequest(created_by_id=host, members=[MemberRequest(user_id=host)])
            call = (await api.get_or_create_call(CALL_TYPE, call_id, request)).call
            token = create_token(BENCH_SECRET, host, ttl=3600)
            address = call.ingress.rtmp.address
            out.append(
                _Stream(f"{address}/{token}", f"{base}/whep/{CALL_TYPE}/{call_id}/{host}", token)
            )
    return out


class Ours:
    """``ingest serve`` in its own process, on free ports."""

    name = "ingest"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""
        self.streams: list[_Stream] = []
        self.log_path: Path | None = None

    async def start(self) -> None:
        self.streams = []
        http_port, rtmp_port = free_port(), free_port()
        env = {
            **os.environ,
            "INGEST_API_KEY": BENCH_KEY,
            "INGEST_API_SECRET": BENCH_SECRET,
            "INGEST_LOG_LEVEL": "INFO",
        }
        self.log_path = self.data_dir.parent / "ingest-serve.log"
        log_file = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 (the child holds it)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(self.data_dir),
            "--host", "127.0.0.1", "--public-host", "127.0.0.1",
            "--http-port", str(http_port), "--rtmp-port", str(rtmp_port),
            env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
        log_file.close()
        self.base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"'ingest serve' exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.base}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("'ingest serve' did not answer /healthz")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None:
            await _stop(self.proc)

    def log_tail(self, lines: int = 3) -> str:
        """The server's last warnings and errors."""
        if self.log_path is None or not self.log_path.exists():
            return "none"
        text = self.log_path.read_text(errors="replace").splitlines()
        bad = [line for line in text if " WARNING " in line or " ERROR " in line]
        return " | ".join(bad[-lines:]) or "no warnings"

    async def run(
        self, media: Path, streams: int, viewers: int, probes: _Probes, plan: Plan
    ) -> Sample:
        assert self.proc is not None
        if len(self.streams) < streams:
            self.streams = await setup_streams(self.base, streams)
        targets = self.streams[:streams]
        pushers = [await _push(media, s.rtmp) for s in targets]
        restarts = 0

        async def supervise() -> None:
            """Push again when a publish was refused: the server admits MAX_PENDING_PER_ADDRESS
            publish decisions per client address at a time, and every pusher here is 127.0.0.1
            (OBS instances would come from as many addresses)."""
            nonlocal restarts
            while True:
                await asyncio.sleep(0.2)
                for i, p in enumerate(pushers):
                    if p.returncode is not None:
                        restarts += 1
                        pushers[i] = await _push(media, targets[i].rtmp)

        supervisor = asyncio.create_task(supervise())
        try:
            for s in targets:
                for _ in range(viewers):
                    await probes.whep(s.whep, s.token)
            try:
                await probes.all_added()
            except (RuntimeError, TimeoutError) as e:
                why = f"{restarts} pusher(s) restarted; " if restarts else ""
                raise RuntimeError(f"{e} ({why}server log: {self.log_tail()})") from None
            finally:
                supervisor.cancel()
            if any(p.returncode is not None for p in pushers):
                raise RuntimeError(f"a pusher exited (server log: {self.log_tail()})")
            return await _measure(self.name, streams, viewers, [self.proc.pid], probes, plan)
        finally:
            supervisor.cancel()
            await probes.close()
            for p in pushers:
                await _stop(p)


# -- the ffmpeg baseline -----------------------------------------------------------------------


def _srtp_key() -> str:
    return base64.b64encode(os.urandom(30)).decode()  # 16-byte key + 14-byte salt


def baseline_command(rtmp_port: int, sinks: Sequence[Sequence[int]], *, tee: bool) -> list[str]:
    """``ffmpeg`` listening for one RTMP publish, H.264 copied, AAC → Opus 20 ms, SRTP to each
    sink (``[video, video_rtcp, audio, audio_rtcp]`` ports)."""
    key = _srtp_key()
    opus = [
        "-c:a", "libopus", "-b:a", str(OPUS_BIT_RATE), "-frame_duration", "20",
        "-application", "lowdelay", "-ar", "48000", "-ac", "2",
    ]  # fmt: skip
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-fflags", "nobuffer",
        "-listen", "1", "-i", f"rtmp://127.0.0.1:{rtmp_port}/live/bench",
    ]  # fmt: skip
    srtp = ["-srtp_out_suite", SRTP_SUITE, "-srtp_out_params", key]
    if not tee:
        (video, video_rtcp, audio, audio_rtcp) = sinks[0]
        return [
            *cmd,
            "-map", "0:v", "-c:v", "copy", "-f", "rtp", *srtp,
            f"srtp://127.0.0.1:{video}?rtcpport={video_rtcp}",
            "-map", "0:a", *opus, "-f", "rtp", *srtp,
            f"srtp://127.0.0.1:{audio}?rtcpport={audio_rtcp}",
        ]  # fmt: skip
    slave = f"f=rtp:srtp_out_suite={SRTP_SUITE}:srtp_out_params={key}"
    outputs = []
    for video, video_rtcp, audio, audio_rtcp in sinks:
        outputs.append(f"[select=v:{slave}]srtp://127.0.0.1:{video}?rtcpport={video_rtcp}")
        outputs.append(f"[select=a:{slave}]srtp://127.0.0.1:{audio}?rtcpport={audio_rtcp}")
    return [
        *cmd, "-map", "0:v", "-map", "0:a", "-c:v", "copy", *opus, "-f", "tee", "|".join(outputs)
    ]  # fmt: skip


async def await_video(
    probes: _Probes, servers: Sequence[asyncio.subprocess.Process], who: str
) -> None:
    """Until every viewer has had video; ``RuntimeError`` if one of ``servers`` exits or none
    comes within :data:`START_TIMEOUT`."""
    deadline = time.monotonic() + START_TIMEOUT
    while not all(v[0] > 0 for v in await probes.stats()):
        if any(s.returncode is not None for s in servers):
            raise RuntimeError(f"{who} exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{who}'s sinks got no video")
        await asyncio.sleep(0.1)


class Baseline:
    """The ffmpeg CLI doing our server's job (see :func:`baseline_command`)."""

    name = "ffmpeg"

    async def run(
        self,
        media: Path,
        streams: int,
        viewers: int,
        probes: _Probes,
        plan: Plan,
        *,
        tee: bool = False,
    ) -> Sample:
        servers: list[asyncio.subprocess.Process] = []
        pushers: list[asyncio.subprocess.Process] = []
        try:
            for _ in range(streams):
                sinks: list[list[int]] = []
                for _ in range(viewers):
                    sinks += (await probes.pick().ask("sinks", cmd="sink", count=1))["ports"]
                port = free_port()
                servers.append(await _spawn(*baseline_command(port, sinks, tee=tee)))
                await _wait_for(lambda port=port: _listening(port), "ffmpeg to listen")  # type: ignore[misc]
                pushers.append(await _push(media, f"rtmp://127.0.0.1:{port}/live/bench"))

            await await_video(probes, servers, "the baseline")
            return await _measure(
                self.name, streams, viewers, [s.pid for s in servers], probes, plan
            )
        finally:
            await probes.close()
            for p in pushers:
                await _stop(p)
            for s in servers:
                await _stop(s)


# -- the runs ----------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything one ``compare`` / ``scale`` run measured."""

    plan: Plan
    started: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    compare: list[Sample] = field(default_factory=list)
    scale: list[Sample] = field(default_factory=list)
    fanout: list[Sample] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    # compare
    def medians(self, system: str) -> dict[str, float]:
        samples = [s for s in self.compare if s.system == system and not s.failed]
        if not samples:
            return {}
        return {
            "cpu": statistics.median(s.cpu for s in samples),
            "rss_mb": statistics.median(s.rss_mb for s in samples),
            "fps": statistics.median(s.min_fps for s in samples),
            "lost": statistics.median(s.lost for s in samples),
        }

    def compare_ratio(self) -> float | None:
        """Median over runs of (ours / baseline) CPU per stream, runs paired in order."""
        ours = [s.cpu for s in self.compare if s.system == Ours.name]
        base = [s.cpu for s in self.compare if s.system == Baseline.name]
        ratios = [a / b for a, b in zip(ours, base, strict=False) if b > 0 and a == a]  # not NaN
        return statistics.median(ratios) if ratios else None

    # scale
    def scale_pair(self, streams: int) -> tuple[Sample | None, Sample | None]:
        def find(system: str) -> Sample | None:
            return next(
                (s for s in self.scale if s.system == system and s.streams == streams), None
            )

        return find(Ours.name), find(Baseline.name)

    def largest_ok(self, system: str) -> int:
        ok = [s.streams for s in self.scale if s.system == system and s.ok(self.plan.min_fps)]
        return max(ok, default=0)

    def per_viewer(self, system: str) -> float | None:
        """Extra CPU per viewer: (CPU at most viewers - CPU at fewest) / the difference."""
        samples = sorted((s for s in self.fanout if s.system == system), key=lambda s: s.viewers)
        if len(samples) < 2 or samples[-1].viewers == samples[0].viewers:
            return None
        a, b = samples[0], samples[-1]
        return (b.cpu - a.cpu) / (b.viewers - a.viewers)

    def rows(self) -> list[dict[str, Any]]:
        """The "meets" rows: ratios against the baseline measured in this run."""
        rows: list[dict[str, Any]] = []
        ours, base = self.medians(Ours.name), self.medians(Baseline.name)
        if ours and base:
            ratio = self.compare_ratio()
            rows.append(
                _ratio_row(
                    "Compare: server CPU per stream, 1 stream + 1 viewer (median)",
                    ours["cpu"],
                    base["cpu"],
                    ratio,
                    TARGET_RATIO_ONE_STREAM,
                )
            )
            rows.append(
                _ratio_row(
                    "Compare: server memory (PSS)",
                    ours["rss_mb"],
                    base["rss_mb"],
                    None,
                    None,
                    "MiB",
                )
            )
        n = TARGET_SCALE_STREAMS
        a, b = self.scale_pair(n)
        if a is not None and b is not None:
            rows.append(
                _ratio_row(
                    f"Scale: server CPU per stream at {n} streams",
                    a.cpu_per_stream,
                    b.cpu_per_stream,
                    a.cpu_per_stream / b.cpu_per_stream if b.cpu > 0 else None,
                    TARGET_RATIO_SCALE,
                    ok_also=a.ok(self.plan.min_fps),
                )
            )
        elif self.scale:
            rows.append(
                {
                    "name": f"Scale: server CPU per stream at {n} streams",
                    "value": float("nan"),
                    "unit": "% core",
                    "target": f"<= {TARGET_RATIO_SCALE:g} x ffmpeg",
                    "ok": False if n <= max(self.plan.streams) else None,
                    "baseline": None,
                    "ratio": None,
                }
            )
        if self.scale:
            for system in (Ours.name, Baseline.name):
                rows.append(
                    {
                        "name": f"Scale: most streams with nothing lost, {system}",
                        "value": float(self.largest_ok(system)),
                        "unit": "streams",
                        "target": f"(info; tried up to {max(s.streams for s in self.scale)})",
                        "ok": None,
                        "baseline": None,
                        "ratio": None,
                    }
                )
        pa, pb = self.per_viewer(Ours.name), self.per_viewer(Baseline.name)
        if pa is not None and pb is not None:
            top = max(s.viewers for s in self.fanout)
            low = min(s.viewers for s in self.fanout)
            rows.append(
                _ratio_row(
                    f"Fan-out: extra server CPU per viewer ({low} → {top}; ffmpeg: tee)",
                    pa,
                    pb,
                    pa / pb if pb > 0 else None,
                    TARGET_RATIO_PER_VIEWER,
                )
            )
        return rows


def _ratio_row(
    name: str,
    value: float,
    baseline: float,
    ratio: float | None,
    target: float | None,
    unit: str = "% core",
    *,
    ok_also: bool = True,
) -> dict[str, Any]:
    if ratio is None and baseline > 0:
        ratio = value / baseline
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": "(info)" if target is None else f"<= {target:g} x ffmpeg",
        "ok": None if target is None or ratio is None else (ratio <= target and ok_also),
        "baseline": baseline,
        "ratio": ratio,
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ffmpeg = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True, timeout=10
        ).stdout
        ffmpeg = out.split()[2] if out.startswith("ffmpeg version") else "?"
    mem = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    return {
        "cpu": model,
        "cores": os.cpu_count() or 0,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg,
        "load_before": os.getloadavg()[0],
    }


async def _run(
    plan: Plan,
    *,
    compare: bool,
    scale: bool,
    log: Callable[[str], None],
    media: Path | None = None,
) -> Report:
    report = Report(plan, started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    report.machine = machine()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        if media is None:
            log(f"making {plan.height}p{FPS} test media with ffmpeg…")
            media = await asyncio.to_thread(
                make_media,
                Path(tmp),
                width=plan.width,
                height=plan.height,
                video_bit_rate=plan.video_bit_rate,
            )
        ours, base = Ours(Path(tmp) / "data"), Baseline()
        await ours.start()
        try:
            async with _probes() as probes:

                async def one(
                    system: Ours | Baseline, streams: int, viewers: int, tee: bool
                ) -> Sample:
                    try:
                        if isinstance(system, Baseline):
                            return await system.run(media, streams, viewers, probes, plan, tee=tee)
                        return await system.run(media, streams, viewers, probes, plan)
                    except (RuntimeError, TimeoutError) as e:
                        log(f"  {system.name}: {streams} x {viewers} not measured: {e}")
                        await probes.restart()
                        if isinstance(system, Ours):  # no half-set-up sessions in later steps
                            await system.stop()
                            await system.start()
                        nan = float("nan")
                        load = os.getloadavg()[0]
                        return Sample(system.name, streams, viewers, nan, nan, [], 0, load, str(e))

                async def both(streams: int, viewers: int, tee: bool) -> tuple[Sample, Sample]:
                    a = await one(ours, streams, viewers, tee)
                    b = await one(base, streams, viewers, tee)
                    for s in (a, b):
                        report.loads.append(s.load)
                        log(
                            f"  {s.system:>6}: {s.streams} stream(s) x {s.viewers} viewer(s): "
                            f"CPU {s.cpu:5.1f} % ({s.cpu_per_stream:.1f} %/stream), "
                            f"PSS {s.rss_mb:.0f} MiB, fps >= {s.min_fps:.1f}, lost {s.lost}"
                        )
                    return a, b

                if compare:
                    for i in range(plan.runs):
                        log(f"compare, run {i + 1}/{plan.runs} (1 stream, 1 viewer)…")
                        report.compare += await both(1, 1, False)
                if scale:
                    if compare:  # each phase on a fresh server: no state left by the last
                        await ours.stop()
                        await ours.start()
                    for n in plan.streams:
                        log(f"scale: {n} stream(s), one viewer each…")
                        a, b = await both(n, 1, False)
                        report.scale += [a, b]
                        if not (a.ok(plan.min_fps) and b.ok(plan.min_fps)):
                            log(f"  one system fell behind at {n} streams: stopping here")
                            break
                    await ours.stop()
                    await ours.start()
                    for k in plan.fanout:
                        log(f"fan-out: 1 stream, {k} viewer(s)…")
                        report.fanout += await both(1, k, True)
        finally:
            await ours.stop()
    return report


def run(
    plan: Plan | None = None,
    *,
    compare: bool = True,
    scale: bool = True,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure both systems (blocking; minutes with the default plan)."""
    return asyncio.run(
        _run(plan or Plan(), compare=compare, scale=scale, log=log or (lambda _: None))
    )


# -- output ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def markdown(report: Report, rows: Sequence[dict[str, Any]] = ()) -> str:
    """The report as markdown: machine, what differs, the "meets" rows, the tables."""
    m = report.machine
    loads = report.loads or [m.get("load_before", 0.0)]
    lines = [
        f"Measured {report.started} on {m.get('cores')} x {m.get('cpu')} "
        f"({m.get('memory_gib')} GiB), Python {m.get('python')}, ffmpeg {m.get('ffmpeg')}; "
        f"load average during the run {min(loads):.2f}-{max(loads):.2f} "
        f"(before it {m.get('load_before', 0.0):.2f}).",
        "",
        "What the two setups do differently:",
        "",
        *(f"- {d}" for d in DIFFERENCES),
        "",
    ]
    all_rows = [*rows, *report.rows()]
    if all_rows:
        lines += [
            "| benchmark | ingest | ffmpeg | ratio | target | meets |",
            "|---|---|---|---|---|---|",
        ]
        for r in all_rows:
            ok = {True: "yes", False: "**NO**", None: ""}[r.get("ok")]
            unit = r["unit"]
            base = r.get("baseline")
            lines.append(
                f"| {r['name']} | {_fmt(r['value'])} {unit} | "
                f"{'' if base is None else _fmt(base) + ' ' + unit} | "
                f"{'' if r.get('ratio') is None else _fmt(r['ratio'], 2) + ' x'} | "
                f"{r.get('target', '')} | {ok} |"
            )
        lines.append("")
    if report.compare:
        ours, base = report.medians(Ours.name), report.medians(Baseline.name)
        lines += [
            f"Compare: 1 stream, 1 viewer, {report.plan.runs} interleaved runs of "
            f"{report.plan.window:g} s each, medians:",
            "",
            "| | CPU (% core) | PSS (MiB) | fps per viewer (lowest) | RTP sequence gaps |",
            "|---|---|---|---|---|",
        ]
        for name, med in ((Ours.name, ours), (Baseline.name, base)):
            lines.append(
                f"| {name} | {_fmt(med['cpu'])} | {_fmt(med['rss_mb'], 0)} | "
                f"{_fmt(med['fps'])} | {med['lost']:g} |"
            )
        ratio = report.compare_ratio()
        lines += ["", f"CPU ratio ingest / ffmpeg (median of the runs' ratios): {_fmt(ratio, 2)}"]
        lines.append("")
    if report.scale:
        tried = sorted({s.streams for s in report.scale})
        lines += [
            "Scale: N streams, one viewer each (CPU: all of the system's processes, "
            "% of one core):",
            "",
            "| N | ingest CPU | ingest per stream | ffmpeg CPU | ffmpeg per stream | ratio | "
            "ingest fps ≥ / gaps | ffmpeg fps ≥ / gaps |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in sorted({s.streams for s in report.scale}):
            a, b = report.scale_pair(n)
            lines.append(_pair_line(str(n), a, b, per_stream=True))
        lines += [
            "",
            f"Most streams with nothing lost: ingest {report.largest_ok(Ours.name)}, "
            f"ffmpeg {report.largest_ok(Baseline.name)} (tried {', '.join(map(str, tried))}).",
            "",
        ]
    if report.fanout:
        lines += [
            "Fan-out: one stream, K viewers (ffmpeg: one process, `tee` muxer):",
            "",
            "| K | ingest CPU | ffmpeg CPU | ratio | ingest fps ≥ / gaps | ffmpeg fps ≥ / gaps |",
            "|---|---|---|---|---|---|",
        ]
        for k in sorted({s.viewers for s in report.fanout}):
            a = next((s for s in report.fanout if s.system == Ours.name and s.viewers == k), None)
            b = next(
                (s for s in report.fanout if s.system == Baseline.name and s.viewers == k), None
            )
            lines.append(_pair_line(str(k), a, b, per_stream=False))
        lines += [
            "",
            f"Extra CPU per viewer: ingest {_fmt(report.per_viewer(Ours.name), 2)} %, "
            f"ffmpeg {_fmt(report.per_viewer(Baseline.name), 2)} %.",
            "",
        ]
    return "\n".join(lines)


def _pair_line(label: str, a: Sample | None, b: Sample | None, *, per_stream: bool) -> str:
    def cells(s: Sample | None) -> list[str]:
        if s is None:
            return ["-", "-"] if per_stream else ["-"]
        out = [_fmt(s.cpu)]
        if per_stream:
            out.append(_fmt(s.cpu_per_stream))
        return out

    ratio = _fmt(a.cpu / b.cpu, 2) if a is not None and b is not None and b.cpu > 0 else "-"

    def health(s: Sample | None) -> str:
        if s is None:
            return "-"
        return "not measured" if s.failed else f"{s.min_fps:.1f} / {s.lost}"

    return "| " + " | ".join([label, *cells(a), *cells(b), ratio, health(a), health(b)]) + " |"


def plot(report: Report, path: Path) -> None:
    """CPU per stream and total CPU against N, and CPU against viewers, both systems (PNG)."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "the plot needs matplotlib: pip install 'ingest[bench]' (or omit --plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {Ours.name: ("tab:blue", "o"), Baseline.name: ("tab:orange", "s")}
    for system, (color, marker) in styles.items():
        scale = sorted((s for s in report.scale if s.system == system), key=lambda s: s.streams)
        if scale:
            n = [s.streams for s in scale]
            axes[0].plot(n, [s.cpu_per_stream for s in scale], marker=marker, color=color,
                         label=system)  # fmt: skip
            axes[1].plot(n, [s.cpu for s in scale], marker=marker, color=color, label=system)
            bad = [s for s in scale if not s.ok(report.plan.min_fps)]
            if bad:
                axes[1].scatter([s.streams for s in bad], [s.cpu for s in bad], s=120,
                                facecolors="none", edgecolors="red",
                                label=f"{system}: fell behind")  # fmt: skip
        fan = sorted((s for s in report.fanout if s.system == system), key=lambda s: s.viewers)
        if fan:
            label = system + (" (tee)" if system == Baseline.name else "")
            axes[2].plot([s.viewers for s in fan], [s.cpu for s in fan], marker=marker,
                         color=color, label=label)  # fmt: skip
    axes[0].set(title="CPU per stream", xlabel="streams (1 viewer each)", ylabel="% of one core")
    axes[1].set(title="total CPU", xlabel="streams (1 viewer each)", ylabel="% of one core")
    axes[2].set(title="one stream, fan-out", xlabel="viewers", ylabel="% of one core")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend()
    m = report.machine
    fig.suptitle(
        f"1080p30 6 Mbit/s H.264 + AAC → WebRTC (ingest) vs ffmpeg CLI → SRTP; "
        f"{m.get('cores')} x {m.get('cpu')}, {report.started}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(report: Report, rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "started": report.started,
        "machine": report.machine,
        "plan": asdict(report.plan),
        "differences": list(DIFFERENCES),
        "rows": [*rows, *report.rows()],
        "compare": [asdict(s) for s in report.compare],
        "scale": [asdict(s) for s in report.scale],
        "fanout": [asdict(s) for s in report.fanout],
    }
