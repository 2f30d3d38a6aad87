"""RTMP ingest gateway that bridges OBS into WebRTC livestream calls."""

__version__ = "0.1.0"
