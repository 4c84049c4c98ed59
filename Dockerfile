# Kiln's binaries (kiln-dispatcher, kiln-worker, kiln, kiln-mock-llm) and the
# process sandbox's runtime (bubblewrap + the pinned Python packages), in one
# image that every role runs from, as the unprivileged user `kiln` (uid and
# gid 10001, fixed so that Kubernetes' runAsUser, file ownership and
# docker-compose.yml agree). docker-compose.yml runs it as the dispatcher,
# the workers and the mock model server.
#
#   docker build -t kiln .                                   (compiles Kiln)
#   docker build --target prebuilt -t kiln .                 (uses target/release)
#
# Compiling caches the dependencies in a layer of their own, built from the
# Cargo manifests and Cargo.lock alone, so a change to Kiln's sources
# recompiles Kiln only. Nothing here needs BuildKit: the legacy builder
# builds every stage up to the target, which is why the stages `prebuilt`
# needs come first and the Rust image is not pulled for it.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# The base image's user and PATH are not assumed: a debootstrapped one (see
# scripts/check-image) runs as nobody with its own PATH.
USER root
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/opt/kiln
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap python3 python3-venv util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/kiln --no-create-home \
    --shell /usr/sbin/nologin kiln
COPY sandbox/requirements.lock /opt/kiln/src/sandbox/requirements.lock
COPY scripts/setup-sandbox-runtime /opt/kiln/src/scripts/setup-sandbox-runtime
RUN /opt/kiln/src/scripts/setup-sandbox-runtime /opt/kiln/sandbox
COPY examples /opt/kiln/examples
ENV KILN_HTTP_ADDR=0.0.0.0:8080 \
    KILN_SANDBOX_RUNTIME=/opt/kiln/sandbox \
    KILN_LOG_FORMAT=json
# Everything above is root's and read-only to the roles: they write only to
# Postgres, Redis, the Docker engine and /tmp.
WORKDIR /opt/kiln
EXPOSE 8080

# Binaries built on the host (cargo build --release --bins), for machines
# without a Rust image.
FROM base AS prebuilt
COPY target/release/kiln target/release/kiln-dispatcher target/release/kiln-worker target/release/kiln-mock-llm /usr/local/bin/
USER 10001:10001
CMD ["kiln-dispatcher"]

# The workspace reduced to what compiling the dependencies reads: manifests,
# Cargo.lock, the toolchain file, and an empty stub at each path a manifest
# names or cargo looks for (src/lib.rs, src/main.rs, src/bin/, benches/; a
# test or example target named in a manifest would need its path added).
# Docker caches a COPY by the content copied, so while none of those change
# the stubs are the same bytes and the dependency layer below is reused.
FROM ${RUST_IMAGE} AS skeleton
WORKDIR /src
COPY . .
RUN find . -path ./target -prune -o -type f \( -name Cargo.toml -o -name Cargo.lock -o -name rust-toolchain.toml \
        -o -path '*/src/lib.rs' -o -path '*/src/main.rs' -o -path '*/src/bin/*.rs' \
        -o \( -path './benches/*.rs' ! -path './benches/*/*' \) \) -print \
    | while IFS= read -r f; do \
        mkdir -p "/skeleton/${f%/*}"; \
        case "$f" in \
            */lib.rs) : >"/skeleton/$f" ;; \
            *.rs) echo 'fn main() {}' >"/skeleton/$f" ;; \
            *) cp "$f" "/skeleton/$f" ;; \
        esac; \
    done

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Queries are checked against the committed .sqlx data: no database needed.
ENV SQLX_OFFLINE=true
COPY --from=skeleton /skeleton/ ./
# The dependencies (and Kiln's crates as stubs), cached until a manifest or
# Cargo.lock changes.
RUN cargo build --release --locked --bins
COPY . .
# COPY keeps the files' modification times, which may be older than the
# stubs' build: cargo would take the stubs' outputs as up to date. Newer
# times make it rebuild Kiln's crates (and only them).
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bins \
 && mkdir /out && cp target/release/kiln target/release/kiln-dispatcher \
    target/release/kiln-worker target/release/kiln-mock-llm /out/

FROM base AS runtime
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
CMD ["kiln-dispatcher"]
