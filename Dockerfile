# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a slim Debian
# with only the shared libraries the binary links (libssl, libz via
# librdkafka built from source) and a non-root user.
#
#   docker build -t kafka-delay:0.1.0 --build-arg VERSION=0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) .

# The toolchain must satisfy Cargo.toml's rust-version (helm/check.sh checks).
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer that changes only with the manifests: a
# change under src/ rebuilds the service crate, not librdkafka and the rest.
COPY Cargo.toml Cargo.lock ./
COPY tools/Cargo.toml ./tools/
RUN mkdir -p src tools/src topics \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tools/src/main.rs && touch tools/src/lib.rs \
    && cargo build --release --locked -p kafka-delay \
    && rm -rf src tools/src target/release/kafka-delay target/release/deps/kafka_delay-* \
       target/release/.fingerprint/kafka-delay-*
COPY src ./src
COPY topics ./topics
COPY config ./config
COPY tools/src ./tools/src
# The revision becomes the `revision` label of kafka_delay_build_info.
ARG REVISION=unknown
RUN KAFKA_DELAY_REVISION="${REVISION}" cargo build --release --locked -p kafka-delay --bin kafka-delay \
    && strip target/release/kafka-delay

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kafka-delay" \
      org.opencontainers.image.description="Delayed delivery for Apache Kafka: a hierarchical timing wheel made of Kafka topics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 kafka-delay \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin kafka-delay
COPY --from=build /src/target/release/kafka-delay /usr/local/bin/kafka-delay
COPY config/example.toml /etc/kafka-delay/example.toml
# Non-root; the chart also mounts the root filesystem read-only (the service
# writes nothing to disk).
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/kafka-delay"]
# Configuration from the environment alone (KAFKA_DELAY__SECTION__KEY), e.g.
#   docker run -e KAFKA_DELAY__KAFKA__BOOTSTRAP_SERVERS=broker:9092 kafka-delay:0.1.0
# or mount a file and pass `run --config /path/config.toml` (the chart does).
CMD ["run"]
