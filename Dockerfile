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
# HTTP API, RTMP. WebRTC media uses UDP ports chosen by aiortc: run with --network host.
EXPOSE 8080 1935
CMD ["ingest", "serve"]
