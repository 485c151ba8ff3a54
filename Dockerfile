# syntax=docker/dockerfile:1
# outbox-relay image: a Rust build stage, and a slim non-root runtime.
#   docker build -t outbox-relay .                 # the relay (last stage)
#   docker build --target demo -t outbox-relay-demo .   # the example monolith and consumer
# Configure the relay with OUTBOX_RELAY__<SECTION>__<KEY> environment variables (see docker-compose.yml),
# or mount a TOML file over /etc/outbox-relay/outbox-relay.toml.

FROM rust:1-bookworm AS build
# rdkafka-sys builds librdkafka from source with its configure script and make: gcc, g++ and make (in
# this image), pkg-config, and the OpenSSL (SASL_SSL, SCRAM) and zlib headers. cmake is not used by this
# build (rdkafka's cmake-build feature is off); README.md, "Building from source".
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin outbox-relay \
 && mkdir -p /out && cp target/release/outbox-relay /out/

FROM build AS build-demo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --example monolith --example consumer \
 && cp target/release/examples/monolith target/release/examples/consumer /out/

# The example monolith and NotificationService consumer (docker compose --profile demo).
FROM debian:bookworm-slim AS demo
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin outbox-demo
COPY --from=build-demo /out/monolith /out/consumer /usr/local/bin/
USER 10001:10001
WORKDIR /tmp

# The relay (default target).
FROM debian:bookworm-slim AS relay
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin outbox-relay \
 && mkdir -p /etc/outbox-relay \
 && printf '%s\n' \
      '# Every key has a default; OUTBOX_RELAY__<SECTION>__<KEY> environment variables override this file.' \
      > /etc/outbox-relay/outbox-relay.toml \
 && chmod 0644 /etc/outbox-relay/outbox-relay.toml
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
USER 10001:10001
# /live, /ready and /metrics (admin.listen; set OUTBOX_RELAY__ADMIN__LISTEN=0.0.0.0:9464 to publish it).
EXPOSE 9464
# SIGTERM drains the open Kafka transaction (shutdown.drain_timeout_ms): give it time to (docker stop -t).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run", "--config", "/etc/outbox-relay/outbox-relay.toml"]
