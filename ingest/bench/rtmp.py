"""RTMP parser throughput: a realistic publish stream fed to ServerConnection in 64 KiB reads.

Run ``python -m ingest.bench.rtmp`` (targets: ≥ 200 Mbit/s at chunk size 128, ≥ 1000 at 4096).
"""

from __future__ import annotations

import random
import time

from ingest.rtmp.chunk import DEFAULT_CHUNK_SIZE, ChunkWriter
from ingest.rtmp.connection import PublishRequested, ServerConnection
from ingest.rtmp.handshake import HANDSHAKE_SIZE
from ingest.rtmp.messages import CommandMessage, DataMessage, SetChunkSize

READ_SIZE = 64 * 1024
TARGETS_MBPS = {128: 200.0, 4096: 1000.0}


def build_stream(chunk_size: int, seconds_of_media: float = 20.0, seed: int = 1) -> bytes:
    """Handshake + connect + createStream + publish + metadata + interleaved audio/video."""
    rnd = random.Random(seed)
    w = ChunkWriter()
    out = bytearray(b"\x03" + bytes(HANDSHAKE_SIZE) + bytes(HANDSHAKE_SIZE))
    if chunk_size != DEFAULT_CHUNK_SIZE:
        out += w.write(2, 1, 0, 0, bytes(SetChunkSize(chunk_size)))
        w.chunk_size = chunk_size
    connect = CommandMessage(
        "connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live", "flashVer": "FMLE/3.0"}
    )
    out += w.write(3, 20, 0, 0, bytes(connect))
    out += w.write(3, 20, 0, 0, bytes(CommandMessage("createStream", 2.0)))
    out += w.write(8, 20, 1, 0, bytes(CommandMessage("publish", 3.0, None, ["key", "live"])))
    meta = DataMessage(["@setDataFrame", "onMetaData", {"width": 1920.0, "height": 1080.0}])
    out += w.write(4, 18, 1, 0, bytes(meta))
    video_t, audio_t = 0.0, 0.0
    end = seconds_of_media * 1000
    frame = 0
    while video_t < end:
        if audio_t <= video_t:
            out += w.write(4, 8, 1, int(audio_t), rnd.randbytes(rnd.randint(200, 400)))
            audio_t += 1024 / 44.1
        else:
            size = 50_000 if frame % 60 == 0 else rnd.randint(5_000, 30_000)
            out += w.write(6, 9, 1, int(video_t), rnd.randbytes(size))
            video_t += 1000 / 30
            frame += 1
    return bytes(out)


def _consume(stream: bytes) -> int:
    conn = ServerConnection()
    view = memoryview(stream)
    count = 0
    for i in range(0, len(stream), READ_SIZE):
        conn.receive_data(bytes(view[i : i + READ_SIZE]))
        conn.data_to_send()
        while (event := conn.next_event()) is not None:
            count += 1
            if isinstance(event, PublishRequested):
                conn.accept_publish(event.stream_id)
    return count


def bench_parser(chunk_size: int, seconds: float = 2.0) -> dict[str, float]:
    """Feed a built stream repeatedly for ``seconds``; report throughput in Mbit/s."""
    stream = build_stream(chunk_size)
    _consume(stream)  # warm up (and check that the stream parses)
    total = 0
    events = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        events += _consume(stream)
        total += len(stream)
        elapsed = time.perf_counter() - start
    mbps = total * 8 / elapsed / 1e6
    return {
        "chunk_size": chunk_size,
        "mbit_per_s": mbps,
        "target_mbit_per_s": TARGETS_MBPS.get(chunk_size, 0.0),
        "bytes": total,
        "events": events,
        "seconds": elapsed,
    }


def main() -> None:
    for chunk_size in (128, 4096):
        r = bench_parser(chunk_size)
        print(
            f"chunk size {chunk_size:5d}: {r['mbit_per_s']:8.1f} Mbit/s "
            f"(target >= {r['target_mbit_per_s']:.0f}; {r['bytes'] / 1e6:.0f} MB, "
            f"{r['events']:.0f} events in {r['seconds']:.2f} s)"
        )


if __name__ == "__main__":
    main()
