#!/usr/bin/env bash
# Push a test pattern with a burned-in clock and a 440 Hz tone (or a file) into a call, the way
# OBS would.
#   samples/push-ffmpeg.sh <rtmp address> <stream key> [input file]
# The address is call.ingress.rtmp.address (`ingest call create` prints it with a key; the host
# page, samples/host.html, shows both). The clock is the sender's wall clock (HH:MM:SS) with the
# frame number and the stream time to the millisecond: put a viewer next to this terminal's clock
# to see the delay by eye (`ingest bench` and the browser bench measure it properly).
# Settings that keep the WebRTC bridge cheap: no B-frames (-bf 0), 1 s keyframe interval.
# The text needs ffmpeg with libfreetype + fontconfig (Debian's has both) and a monospace font
# (Debian: fonts-dejavu-core); FONT=<file.ttf> picks another one.
set -euo pipefail
usage="usage: $0 <rtmp address> <stream key> [input file]"
address="${1:?$usage}"
key="${2:?$usage}"
font="${FONT:-$(fc-match -f '%{file}' monospace 2>/dev/null || true)}"
if [ $# -ge 3 ]; then
  input=(-re -i "$3")
  filter=()
else
  input=(-re -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000")
  clock="text='%{localtime\\:%H\\\\\\:%M\\\\\\:%S}  frame %{n}  t=%{pts\\:hms}'"
  box="fontsize=40:fontcolor=white:box=1:boxcolor=black@0.7:boxborderw=10:x=20:y=60"
  if [ -n "$font" ]; then
    filter=(-vf "drawtext=fontfile='$font':$clock:$box")
  else
    echo "no monospace font found (apt-get install fonts-dejavu-core): pushing without the clock" >&2
    filter=()
  fi
fi
exec ffmpeg -hide_banner "${input[@]}" "${filter[@]}" \
  -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -bf 0 -g 30 -b:v 3M \
  -pix_fmt yuv420p -c:a aac -b:a 128k -ar 48000 \
  -f flv "$address/$key"
