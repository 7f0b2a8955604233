# strait: `strait --mode all` on its embedded defaults, or pointed at a PostgreSQL with DATABASE_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 STRAIT_DATA_DIR=/data PORT=8080

WORKDIR /src
COPY pyproject.toml README.md ./
COPY strait_actors ./strait_actors
COPY migrations ./migrations
COPY config ./config
RUN pip install --no-cache-dir . && rm -rf /src

# the embedded PostgreSQL refuses to run as root: run as an unprivileged user
RUN useradd --create-home --uid 10001 strait && mkdir -p /data && chown strait /data
USER strait
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health').status == 200 else 1)"

ENTRYPOINT ["strait"]
CMD ["--mode", "all"]
