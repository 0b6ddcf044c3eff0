# Images for Kubernetes: `--target dataplane` (dragonfly-scheduler, dfdaemon,
# dfget) and `--target operator` (dragonfly-operator).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p dragonfly-scheduler -p dragonfly-node-agent -p dragonfly-operator --bins

FROM debian:bookworm-slim AS dataplane
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dragonfly-scheduler /src/target/release/dfdaemon /src/target/release/dfget /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/dfdaemon"]

FROM debian:bookworm-slim AS operator
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dragonfly-operator /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dragonfly-operator"]
