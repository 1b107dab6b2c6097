# opampd container image: a static-ish release build on Debian slim.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p opampd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/opampd opampd \
    && mkdir -p /var/lib/opampd && chown opampd /var/lib/opampd
COPY --from=build /src/target/release/opampd /usr/local/bin/opampd
USER opampd
WORKDIR /var/lib/opampd
# the admin listener is reachable from other containers (health checks, the console, the CLI),
# so it needs a token: run with OPAMPD_ADMIN_TOKEN or OPAMPD_ADMIN_TOKEN_FILE set (without one
# opampd exits 64 and says so)
ENV OPAMPD_LISTEN=0.0.0.0:4320 \
    OPAMPD_ADMIN_LISTEN=0.0.0.0:4321 \
    OPAMPD_DATA_DIR=/var/lib/opampd
EXPOSE 4320 4321
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:4321/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/opampd"]
