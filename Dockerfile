# spoke-grpc: `docker build -t spoke-grpc .` then
# `docker run -e DATABASE_URL=postgresql://user:pass@db:5432/spoke -p 50051:50051 spoke-grpc`
# npm's protoc-gen-es (TypeScript, JavaScript) needs Node.js 20; bookworm packages 18.
FROM node:20-bookworm-slim AS generators
ARG PROTOC_GEN_ES_VERSION=2.13.0
RUN npm install --prefix /app/.generators --no-save --no-package-lock --no-audit --no-fund \
        @bufbuild/protoc-gen-es@${PROTOC_GEN_ES_VERSION} && rm -rf /root/.npm

FROM python:3.11-slim-bookworm

# CompileVersion's code generators (README "Languages"): Debian's protoc and plugins, and
# bubblewrap, their sandbox where the container may create namespaces (else they run without).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
        protobuf-compiler-grpc protobuf-compiler-grpc-java-plugin protoc-gen-go \
        protoc-gen-go-grpc protobuf-codegen bubblewrap \
    && rm -rf /var/lib/apt/lists/*
COPY --from=generators /usr/local/bin/node /usr/local/bin/node

RUN useradd --create-home --uid 10001 spoke
WORKDIR /app
COPY --from=generators /app/.generators ./.generators

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
