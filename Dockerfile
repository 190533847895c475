# syntax=docker/dockerfile:1
# flow's image: the `flow` binary on Debian slim, run as the user `flow` (uid 10001), with the
# example DAGs. One image for every role; the command chooses it:
#
#   docker run -p 8080:8080 flow                    # standalone (the default): SQLite in FLOW_HOME
#   docker run flow scheduler --no-tasks            # plans runs, runs no task
#   docker run flow worker                          # runs the tasks the schedulers queue
#   docker run -p 8080:8080 flow server             # the REST API and the pages
#
# docker-compose.yml runs a local cluster of them; deploy/aws/flow.yaml the same on ECS Fargate;
# docs/deploy.md walks through both. deploy/check.py checks this file (tests/e2e/deploy.rs).

# Must be rust-toolchain.toml's channel (deploy/check.py compares them).
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

# --- builder: the release binary -------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
ARG RUST_VERSION
# rust-toolchain.toml names this same toolchain and also asks for rustfmt and clippy, which a
# release build does not use; naming the image's toolchain keeps rustup from downloading them.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# The registry and target folders are BuildKit caches, kept between builds; the binary is copied
# out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flow \
    && install -D -m 0755 target/release/flow /out/flow

# --- runtime ---------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# The steps are a script so that deploy/check.py can run the same ones into a scratch root.
COPY deploy/docker/runtime-setup.sh deploy/docker/entrypoint.sh deploy/docker/healthcheck.sh /tmp/flow-setup/
RUN sh /tmp/flow-setup/runtime-setup.sh /tmp/flow-setup && rm -rf /tmp/flow-setup
COPY --from=builder /out/flow /usr/local/bin/flow
# DAG files are code: root's, read-only to the user that runs the tasks.
COPY --chown=0:0 dags/ /opt/flow/dags/

ENV FLOW_HOME=/var/lib/flow \
    FLOW_DAGS_FOLDER=/opt/flow/dags \
    FLOW_BIND=0.0.0.0:8080
USER 10001:10001
WORKDIR /var/lib/flow
EXPOSE 8080
# flow stops cleanly on SIGTERM: the server finishes the requests in flight, a scheduler or
# worker stops its tries' process groups and puts the tries back to `queued` without using a
# retry. Give it time before SIGKILL (compose: stop_grace_period; ECS: stopTimeout, both 30 s).
STOPSIGNAL SIGTERM
# GET /api/v1/health for `server` and `standalone`; the other commands serve no HTTP and are
# healthy while they run (deploy/docker/healthcheck.sh says why).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/flow-healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/flow-entrypoint"]
CMD ["standalone"]
