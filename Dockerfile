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

# readiness: the database answers and holds this version's migrations (a 503 raises: exit 1);
# python's urllib, so the image needs no curl. `--mode worker` answers on WORKER_PORT instead (compose)
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8080'), timeout=2)"

ENTRYPOINT ["strait"]
CMD ["--mode", "all"]
