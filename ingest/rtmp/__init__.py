"""RTMP ingest: a sans-I/O server protocol layer and a thin asyncio server.

``handshake`` → ``chunk`` → ``messages``/``amf0`` → ``connection`` (events) are sans-I/O;
``server`` adds sockets, timeouts and limits and asks a ``PublishHandler`` before publishing.
"""
