# Kiln's binaries (kiln-dispatcher, kiln-worker, kiln, kiln-mock-llm) and the
# process sandbox's runtime (bubblewrap + the pinned Python packages), in one
# image. docker-compose.yml runs it as the dispatcher and as workers.
#
#   docker build -t kiln .                                   (compiles Kiln)
#   docker build --target prebuilt -t kiln .                 (uses target/release)

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Queries are checked against the committed .sqlx data: no database needed.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bins \
 && mkdir /out && cp target/release/kiln target/release/kiln-dispatcher \
    target/release/kiln-worker target/release/kiln-mock-llm /out/

FROM ${BASE_IMAGE} AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap python3 python3-venv util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY sandbox/requirements.lock /opt/kiln/src/sandbox/requirements.lock
COPY scripts/setup-sandbox-runtime /opt/kiln/src/scripts/setup-sandbox-runtime
RUN /opt/kiln/src/scripts/setup-sandbox-runtime /opt/kiln/sandbox
COPY examples /opt/kiln/examples
ENV KILN_HTTP_ADDR=0.0.0.0:8080 \
    KILN_SANDBOX_RUNTIME=/opt/kiln/sandbox \
    KILN_LOG_FORMAT=json
WORKDIR /opt/kiln
EXPOSE 8080
CMD ["kiln-dispatcher"]

# Binaries built on the host (cargo build --release --bins), for machines
# without a Rust image.
FROM base AS prebuilt
COPY target/release/kiln target/release/kiln-dispatcher target/release/kiln-worker target/release/kiln-mock-llm /usr/local/bin/

FROM base AS runtime
COPY --from=build /out/ /usr/local/bin/
