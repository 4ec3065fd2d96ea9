# sluice, built from source. io_uring is often blocked by container seccomp
# profiles; sluice then falls back to epoll by itself.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sluice

FROM debian:bookworm-slim
# The system trust store, for brokers with public certificates (OpenSSL is
# built into the binary; sluice points librdkafka at these with "probe").
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# Not root: sluice needs no privilege (port 8080, no files to write).
USER 10001:10001
EXPOSE 8080
# Liveness through the binary itself (the image has no curl): GET /healthz
# on the listen address from the configuration; exit 0 on 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/sluice", "probe"]
ENTRYPOINT ["/usr/local/bin/sluice"]
