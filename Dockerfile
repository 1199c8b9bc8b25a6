# RedisGate container image: `docker build -t redisgate .` from the repository root
# (deploy/docker-compose.yml builds it this way).
#
# Stage 1 builds the release binary; its dependencies are compiled in a layer of their own
# that only changes with Cargo.toml/Cargo.lock. Stage 2 is a slim Debian with redis-server
# (the local provisioner runs one per managed instance) and the binary, run as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src

# Dependency layer: the manifests and lock file with stub sources, built once. Every crate of
# the workspace needs its Cargo.toml here (crates/redisgate-server/tests/it/deploy.rs checks).
COPY Cargo.toml Cargo.lock ./
COPY crates/redisgate/Cargo.toml crates/redisgate/
COPY crates/redisgate-core/Cargo.toml crates/redisgate-core/
COPY crates/redisgate-provision/Cargo.toml crates/redisgate-provision/
COPY crates/redisgate-server/Cargo.toml crates/redisgate-server/
COPY crates/redisgate-store/Cargo.toml crates/redisgate-store/
RUN for d in crates/*/; do \
         mkdir -p "$d/src" && : > "$d/src/lib.rs" && echo 'fn main() {}' > "$d/src/main.rs"; \
       done \
    && cargo build --release --locked -p redisgate \
    && rm -rf crates

# The real sources. Touch them so cargo rebuilds the workspace crates over the stubs.
COPY crates crates
RUN find crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p redisgate \
    && install -m 0755 target/release/redisgate /usr/local/bin/redisgate


FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         redis-server ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin redisgate \
    && mkdir -p /data \
    && chown redisgate:redisgate /data

COPY --from=build /usr/local/bin/redisgate /usr/local/bin/redisgate

ENV REDISGATE_DATA_DIR=/data \
    REDISGATE_LISTEN=0.0.0.0:8080
VOLUME ["/data"]
EXPOSE 8080
USER redisgate
WORKDIR /data

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health/live > /dev/null || exit 1

ENTRYPOINT ["redisgate"]
CMD ["serve"]
