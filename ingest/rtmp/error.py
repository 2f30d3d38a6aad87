"""The RTMP layer's single error type."""

from __future__ import annotations


class RTMPError(ValueError):
    """The peer broke the RTMP protocol (or exceeded a limit); the message says how."""
