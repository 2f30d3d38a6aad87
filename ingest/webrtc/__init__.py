"""WebRTC egress: viewers receive hub media through aiortc, without per-viewer transcoding.

* :mod:`.tracks`: aiortc tracks returning pre-encoded ``av.Packet`` (H.264 at 90 kHz, Opus at
  48 kHz) from hub readers.
* :mod:`.bridge`: one shared bridge per hub track (passthrough, B-frame removal, AAC → Opus)
  publishing into an internal hub track that viewers read.
* :mod:`.negotiation`: the H.264 the sender sends is chosen from the remote's list, named with
  the stream's ``profile-level-id``.
* :mod:`.subscriber`: one viewer peer connection (answers WHEP, offers on the call WebSocket).
* :mod:`.sfu`: WHEP viewer sessions and the shared bridges.
* :mod:`.whep`: the WHEP HTTP endpoints; :mod:`.signaling`: the call WebSocket.
* :mod:`.aiortc_compat`: every use of aiortc / aioice / pylibsrtp internals, checked at import.
"""
