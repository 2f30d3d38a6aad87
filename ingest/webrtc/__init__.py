"""WebRTC egress: viewers receive hub media through aiortc, without per-viewer transcoding.

* :mod:`.tracks`: aiortc tracks returning pre-encoded ``av.Packet`` (H.264 at 90 kHz, Opus at
  48 kHz) from hub readers.
* :mod:`.bridge`: one shared bridge per hub track (passthrough, B-frame removal, AAC → Opus)
  publishing into an internal hub track that viewers read.
* :mod:`.negotiation`: the answer's H.264 ``profile-level-id`` is the stream's.
* :mod:`.sfu`: viewer peer connections and sessions.
* :mod:`.whep`: the WHEP HTTP endpoints.
"""
