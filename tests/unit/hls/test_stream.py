"""The HLS window: playlist tags, sliding window, blocking reload and preload hints."""

from __future__ import annotations

import asyncio
import re

from ingest.hls.segmenter import Init, Part
from ingest.hls.stream import PART_SEGMENTS, HlsStream

INIT = Init(1, b"init", None, None)


class Feed:
    """Parts of 0.25 s, four per segment, straight into a stream."""

    def __init__(self, stream: HlsStream) -> None:
        self.stream = stream
        self.number = 0
        self.msn = 0
        self.index = 0
        stream.on_init(INIT)

    def part(self, init: Init = INIT) -> Part:
        part = Part(
            self.number, self.msn, self.index, 0.25, self.index == 0, b"p%d" % self.number, init
        )
        self.number += 1
        self.index += 1
        self.stream.on_part(part)
        return part

    def segment(self, init: Init = INIT) -> None:
        while self.index < 4:
            self.part(init)
        self.stream.on_segment_end(self.msn, 1.0)
        self.msn += 1
        self.index = 0


def test_playlist_has_the_ll_hls_tags_and_a_sliding_window() -> None:
    stream = HlsStream(window=3)
    feed = Feed(stream)
    for _ in range(5):
        feed.segment()
    feed.part()
    text = stream.playlist()
    assert text.startswith("#EXTM3U\n")
    assert "#EXT-X-TARGETDURATION:2\n" in text
    assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002" in text
    assert "#EXT-X-PART-INF:PART-TARGET=0.334" in text
    assert "#EXT-X-MEDIA-SEQUENCE:2\n" in text  # segments 0 and 1 slid out
    assert re.findall(r"seg-(\d+)\.m4s", text) == ["2", "3", "4"]
    assert text.count('#EXT-X-MAP:URI="init-1.mp4"') == 1
    # parts: of the last PART_SEGMENTS complete segments and of the one being built
    listed = [int(n) for n in re.findall(r'#EXT-X-PART:.*URI="part-(\d+)\.m4s"', text)]
    assert listed == list(range(20 - 4 * PART_SEGMENTS, 21))
    assert text.rstrip().endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-21.m4s"')
    assert stream.find_part(3) is None  # gone with its segment
    seg = stream.segment(4)
    assert seg is not None
    assert seg.data == b"p16p17p18p19"
    assert stream.playlist("?token=t").count("?token=t") == text.count(".m4s") + 1


def test_long_segments_raise_the_target_duration_and_end_lists() -> None:
    stream = HlsStream()
    feed = Feed(stream)
    feed.part()
    stream.on_segment_end(0, 4.4)
    assert "#EXT-X-TARGETDURATION:4\n" in stream.playlist()
    feed.msn, feed.index = 1, 0
    feed.part()
    stream.end()
    text = stream.playlist()
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "PRELOAD-HINT" not in text
    assert "part-1.m4s" not in text  # the unfinished segment is dropped


def test_a_new_init_is_a_discontinuity() -> None:
    stream = HlsStream()
    feed = Feed(stream)
    feed.segment()
    other = Init(2, b"init2", None, None)
    stream.on_init(other)
    feed.segment(other)
    text = stream.playlist()
    assert text.index("#EXT-X-DISCONTINUITY\n") < text.index('#EXT-X-MAP:URI="init-2.mp4"')
    assert stream.inits.keys() == {1, 2}


def test_joining_mid_segment_starts_at_the_next_independent_part() -> None:
    stream = HlsStream()
    stream.on_part(Part(5, 1, 2, 0.25, False, b"x", INIT))
    assert stream.last_position() is None
    stream.on_part(Part(6, 2, 0, 0.25, True, b"y", INIT))
    assert stream.last_position() == (2, 0)


async def test_blocking_reload_is_answered_when_the_part_appears() -> None:
    stream = HlsStream()
    feed = Feed(stream)
    feed.segment()
    assert stream.ready(0, None)
    assert not stream.ready(1, 0)
    waiting = asyncio.create_task(stream.wait_ready(1, 1, 30))
    await asyncio.sleep(0)
    feed.part()
    await asyncio.sleep(0)
    assert not waiting.done()  # part 0 of segment 1 is not part 1
    feed.part()
    assert await asyncio.wait_for(waiting, 5) is True
    assert stream.ready(0, 7)  # a later segment exists: satisfied
    assert await stream.wait_ready(5, None, 0.01) is False  # times out, then the caller answers


async def test_the_preload_hint_part_is_served_when_cut() -> None:
    stream = HlsStream()
    feed = Feed(stream)
    feed.part()
    waiting = asyncio.create_task(stream.wait_part(1, 30))
    await asyncio.sleep(0)
    assert not waiting.done()
    part = feed.part()
    assert await asyncio.wait_for(waiting, 5) is part
    assert await stream.wait_part(9, 30) is None  # not the next one: no waiting
