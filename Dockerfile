# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a slim Debian
# with only the shared libraries the binary links (libssl, libz via
# librdkafka built from source) and a non-root user.

FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY tools ./tools
COPY src ./src
COPY topics ./topics
COPY config ./config
RUN cargo build --release --locked -p kafka-delay --bin kafka-delay \
    && strip target/release/kafka-delay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 kafka-delay \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin kafka-delay
COPY --from=build /src/target/release/kafka-delay /usr/local/bin/kafka-delay
COPY config/example.toml /etc/kafka-delay/example.toml
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/kafka-delay"]
CMD ["run", "--config", "/etc/kafka-delay/config.toml"]
