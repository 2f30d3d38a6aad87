#!/usr/bin/env bash
# Push a test pattern (or a file) into a call, the way OBS would.
#   samples/push-ffmpeg.sh <rtmp address> <stream key> [input file]
# The address is call.ingress.rtmp.address (`ingest call create` prints it with a key).
# Settings that keep the WebRTC bridge cheap: no B-frames (-bf 0), 1 s keyframe interval.
set -euo pipefail
address="${1:?usage: $0 <rtmp address> <stream key> [input file]}"
key="${2:?usage: $0 <rtmp address> <stream key> [input file]}"
if [ $# -ge 3 ]; then
  input=(-re -i "$3")
else
  input=(-re -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440")
fi
exec ffmpeg -hide_banner "${input[@]}" \
  -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -bf 0 -g 30 -b:v 3M \
  -c:a aac -b:a 128k -ar 48000 \
  -f flv "$address/$key"
