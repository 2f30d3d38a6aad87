"""Publish in-memory encoded H.264 + AAC with libavformat's RTMP client (through PyAV).

Run as a child process (`python -m tests.e2e.pyav_publisher URL`): PyAV holds the GIL while
libavformat waits on the socket, so in a thread of the server's process it would deadlock.
Prints the (kind, dts ms) of every packet sent, as JSON, on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import av
import numpy as np


def publish(url: str, frames: int = 45) -> list[tuple[str, int]]:
    sent: list[tuple[str, int]] = []
    with av.open(url, "w", format="flv") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        v.options = {"preset": "ultrafast", "bf": "0", "g": "15"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"

        def mux(packets: list[av.Packet[Any]]) -> None:
            for p in packets:
                assert p.dts is not None
                sent.append((p.stream.type, round(p.dts * p.time_base * 1000)))
                out.mux(p)

        t = np.arange(1024) / 48000
        audio_pts = 0
        for i in range(frames):
            time.sleep(1 / 30)  # the source's own clock: an encoder produces in real time
            img = np.full((240, 320, 3), i * 5 % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            mux(v.encode(frame))
            while audio_pts < (i + 1) * 48000 // 30:
                tone = (0.3 * np.sin(2 * np.pi * 440 * (t + audio_pts / 48000))).astype(np.float32)
                af = av.AudioFrame.from_ndarray(
                    np.stack([tone, tone]), format="fltp", layout="stereo"
                )
                af.sample_rate, af.pts = 48000, audio_pts
                audio_pts += 1024
                mux(a.encode(af))
        mux(v.encode(None))
        mux(a.encode(None))
    return sent


if __name__ == "__main__":
    json.dump(publish(sys.argv[1]), sys.stdout)
