# spoke-grpc: `docker build -t spoke-grpc .` then
# `docker run -e DATABASE_URL=postgresql://user:pass@db:5432/spoke -p 50051:50051 spoke-grpc`
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 spoke
WORKDIR /app

COPY pyproject.toml README.md ./
COPY spoke_grpc ./spoke_grpc
COPY generated ./generated
COPY migrations ./migrations
RUN pip install --no-cache-dir . && rm -rf /root/.cache

ENV SPOKE_LISTEN=0.0.0.0:50051 \
    SPOKE_MIGRATIONS_DIR=/app/migrations \
    SPOKE_DATA_DIR=/home/spoke/.spoke \
    PYTHONUNBUFFERED=1

USER spoke
EXPOSE 50051
# Healthy only while the server answers SERVING (it follows the database; see README
# "Probes"). SPOKE_LISTEN's wildcard host is probed on loopback.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["spoke-grpc", "health", "--timeout", "3"]
# DATABASE_URL comes from the environment; without it the embedded PostgreSQL is used.
CMD ["spoke-grpc", "serve"]
