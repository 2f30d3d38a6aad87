"""Fragmented MP4 (CMAF-style) boxes written by hand: an init segment and moof+mdat fragments.

Why by hand rather than PyAV's mp4 muxer: the remux path only re-frames what the publisher sent
(H.264 access units, raw AAC frames) into a handful of fixed boxes, so this is a few hundred
lines of ``struct.pack`` that run in microseconds per part, keep the GIL for no more than that,
and give exact control over where each part and segment is cut (a libavformat muxer decides
fragment boundaries itself and needs an AVIOContext callback per write). The layout follows
ISO/IEC 14496-12 (boxes) and 14496-15 (``avcC``), 14496-14 (``esds``):

* init: ``ftyp`` + ``moov`` (``mvhd``, one ``trak`` per track with an empty sample table,
  ``mvex``/``trex``);
* fragment: ``moof`` (``mfhd``, one ``traf`` per track with ``tfhd`` default-base-is-moof,
  ``tfdt`` version 1, ``trun`` version 1 with signed composition offsets) + one ``mdat``.

Track 1 is video (timescale 90 kHz), track 2 audio (timescale = the sample rate).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.errors import MediaError
from ingest.media.codecs import h264
from ingest.media.units import AudioConfig, VideoConfig

VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2
VIDEO_TIMESCALE = 90_000
AAC_FRAME_SAMPLES = 1024

SAMPLE_FLAGS_SYNC = 0x02000000  # sample_depends_on = 2 (does not depend on others)
SAMPLE_FLAGS_NON_SYNC = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample = 1

_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_SKIP_NALS = frozenset({h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD, h264.NAL_FILLER})


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a fragment: duration and composition offset in the track's timescale."""

    data: bytes
    duration: int
    sync: bool = True
    composition_offset: int = 0


@dataclass(frozen=True, slots=True)
class TrackRun:
    """A track's samples in one fragment, starting at ``decode_time`` (track timescale)."""

    track_id: int
    decode_time: int
    samples: Sequence[Sample]


# -- init segment -------------------------------------------------------------------------------


def avcc_record(config: VideoConfig) -> bytes:
    """The ``avcC`` payload with 4-byte NAL lengths (what :func:`video_sample` writes)."""
    try:
        if h264.parse_avcc_record(config.record).length_size == 4:
            return config.record
    except MediaError:
        pass  # rebuilt from the parameter sets below
    return h264.build_avcc_record(config.sps, config.pps, 4)


def _descriptor(tag: int, payload: bytes) -> bytes:
    size = len(payload)
    # Four-byte length form (0x80 continuation bits), as most muxers write it.
    length = bytes(
        [0x80 | ((size >> 21) & 0x7F), 0x80 | ((size >> 14) & 0x7F), 0x80 | ((size >> 7) & 0x7F)]
    ) + bytes([size & 0x7F])
    return bytes([tag]) + length + payload


def esds(config: AudioConfig) -> bytes:
    decoder_specific = _descriptor(0x05, config.record)
    decoder_config = _descriptor(
        0x04,
        bytes([0x40, (0x05 << 2) | 1])  # MPEG-4 audio, AudioStream, upstream 0, reserved 1
        + (0).to_bytes(3, "big")  # bufferSizeDB
        + struct.pack(">II", 0, 0)  # max / avg bitrate unknown
        + decoder_specific,
    )
    sl_config = _descriptor(0x06, b"\x02")
    es = _descriptor(0x03, struct.pack(">HB", 0, 0) + decoder_config + sl_config)
    return full_box(b"esds", 0, 0, es)


def _sample_table(entry: bytes) -> bytes:
    return box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )


def _trak(track_id: int, timescale: int, handler: bytes, media_header: bytes, entry: bytes,
          width: int = 0, height: int = 0) -> bytes:  # fmt: skip
    audio = handler == b"soun"
    tkhd = full_box(
        b"tkhd",
        0,
        0x3,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0x0100 if audio else 0, 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))
    name = b"SoundHandler\x00" if audio else b"VideoHandler\x00"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = box(b"minf", media_header, dinf, _sample_table(entry))
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))


def _video_trak(config: VideoConfig) -> bytes:
    entry = box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HH", config.width, config.height),
        struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
        bytes(4),
        struct.pack(">H", 1),  # frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),
        box(b"avcC", avcc_record(config)),
    )
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    return _trak(VIDEO_TRACK_ID, VIDEO_TIMESCALE, b"vide", vmhd, entry, config.width, config.height)


def _audio_trak(config: AudioConfig) -> bytes:
    rate = config.sample_rate if config.sample_rate < 0x10000 else 0
    entry = box(
        b"mp4a",
        bytes(6),
        struct.pack(">H", 1),
        bytes(8),
        struct.pack(">HHHH", config.channels or 2, 16, 0, 0),
        struct.pack(">I", rate << 16),
        esds(config),
    )
    smhd = full_box(b"smhd", 0, 0, bytes(4))
    return _trak(AUDIO_TRACK_ID, config.sample_rate, b"soun", smhd, entry)


def init_segment(video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    """``ftyp`` + ``moov`` for the given tracks (at least one)."""
    if video is None and audio is None:
        raise ValueError("an init segment needs a video or an audio track")
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcisommp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", AUDIO_TRACK_ID + 1),
    )
    traks: list[bytes] = []
    trexs: list[bytes] = []
    if video is not None:
        traks.append(_video_trak(video))
        trexs.append(full_box(b"trex", 0, 0, struct.pack(">IIIII", VIDEO_TRACK_ID, 1, 0, 0, 0)))
    if audio is not None:
        traks.append(_audio_trak(audio))
        trexs.append(full_box(b"trex", 0, 0, struct.pack(">IIIII", AUDIO_TRACK_ID, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, *traks, box(b"mvex", *trexs))


# -- fragments ----------------------------------------------------------------------------------


def video_sample_data(annexb: bytes) -> bytes:
    """An Annex B access unit as MP4 sample data: 4-byte lengths, without SPS/PPS/AUD/filler
    (the parameter sets are in ``avcC``)."""
    return h264.to_avcc(n for n in h264.split_annexb(annexb) if h264.nal_type(n) not in _SKIP_NALS)


def _traf(run: TrackRun, data_offset: int) -> bytes:
    flags = 0x1 | 0x100 | 0x200 | 0x400 | 0x800  # offset, duration, size, flags, cto
    entries = b"".join(
        struct.pack(
            ">IIIi",
            s.duration,
            len(s.data),
            SAMPLE_FLAGS_SYNC if s.sync else SAMPLE_FLAGS_NON_SYNC,
            s.composition_offset,
        )
        for s in run.samples
    )
    return box(
        b"traf",
        full_box(b"tfhd", 0, 0x020000, struct.pack(">I", run.track_id)),  # default-base-is-moof
        full_box(b"tfdt", 1, 0, struct.pack(">Q", run.decode_time)),
        full_box(b"trun", 1, flags, struct.pack(">Ii", len(run.samples), data_offset), entries),
    )


def fragment(sequence: int, runs: Sequence[TrackRun]) -> bytes:
    """``moof`` + ``mdat`` holding ``runs`` (empty runs are left out)."""
    runs = [r for r in runs if r.samples]
    if not runs:
        raise ValueError("a fragment needs at least one sample")
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    # The moof's size does not depend on the offsets' values: build once to measure it.
    moof_size = len(box(b"moof", mfhd, *(_traf(r, 0) for r in runs)))
    offset = moof_size + 8
    trafs: list[bytes] = []
    payload: list[bytes] = []
    for run in runs:
        trafs.append(_traf(run, offset))
        for s in run.samples:
            payload.append(s.data)
            offset += len(s.data)
    return box(b"moof", mfhd, *trafs) + box(b"mdat", *payload)
