# Production image: API + RTMP (+ SFU) in one process. PyAV and aiortc wheels bundle their
# native libraries, so no system ffmpeg is needed at run time.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingest ./ingest
RUN pip install --no-cache-dir . && useradd --system --home /data ingest && mkdir -p /data && chown ingest /data
USER ingest
ENV INGEST_DATA_DIR=/data
VOLUME ["/data"]
# HTTP API, RTMP, RTMPS (when configured) and WebRTC media on a fixed UDP range, which must be
# mapped one to one: docker run -p 8080:8080 -p 1935:1935 -p 50000-50100:50000-50100/udp ...
ENV INGEST_WEBRTC_UDP_PORTS=50000-50100
EXPOSE 8080 1935 1936 50000-50100/udp
CMD ["ingest", "serve"]
