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
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
