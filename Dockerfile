# syntax=docker/dockerfile:1.7
#
# The Trackshift gateway image: built with the Rust toolchain image, run on distroless
# (glibc and CA certificates; no shell, no package manager) as the non-root user 65532,
# meant for a read-only root file system with only the data directory writable.
#
#   docker build -t trackshift:0.1.0 .
#   docker run --read-only --cap-drop ALL --security-opt no-new-privileges \
#       -v trackshift-data:/var/lib/trackshift \
#       -p 4433:4433/udp -p 8480:8480 trackshift:0.1.0
#
# The entrypoint is `trackshift serve`; the default arguments (CMD) bind QUIC and the
# HTTP API on every address. Arguments given to `docker run` or a pod's `args` replace
# CMD as a whole, so give `--data-dir /var/lib/trackshift` again. From the environment:
# TRACKSHIFT_STORE (the `--store` URL), RUST_LOG, TRACKSHIFT_LOG_FORMAT (json|text).
# See deploy/README.md.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are BuildKit caches: a rebuild after a source
# change compiles only the workspace crates. The binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trackshift \
    && install -D -m 0755 target/release/trackshift /out/trackshift \
    && install -d -m 0700 /out/data

# distroless/cc: glibc, libgcc and libm as the binary links them (`ldd`), built for
# the same Debian release as the build stage. `nonroot` runs as 65532:65532.
FROM gcr.io/distroless/cc-debian12:nonroot
# The distroless images have no shell or HTTP client, so there is no HEALTHCHECK: the
# orchestrator probes the gateway over HTTP (Kubernetes: liveness GET /health,
# readiness GET /ready on the --http port, see deploy/helm; systemd: Restart=on-failure;
# anything else: GET /health and /ready from outside the container).
#checkov:skip=CKV_DOCKER_2:no shell or HTTP client in distroless for a HEALTHCHECK; the orchestrator probes /health and /ready over HTTP
LABEL org.opencontainers.image.title="trackshift" \
      org.opencontainers.image.description="Trackshift gateway: QUIC data transfer with post-quantum signed manifests and receipts" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/trackshift /usr/local/bin/trackshift
# The data directory, owner-only like the gateway keeps it; a named volume mounted here
# starts with this owner and mode.
COPY --from=build --chown=65532:65532 --chmod=0700 /out/data /var/lib/trackshift
ENV TRACKSHIFT_LOG_FORMAT=json
USER 65532:65532
VOLUME ["/var/lib/trackshift"]
# QUIC (UDP), the HTTP API, the operator endpoints (only with --operator-http).
EXPOSE 4433/udp 8480/tcp 8481/tcp
ENTRYPOINT ["/usr/local/bin/trackshift", "serve"]
CMD ["--data-dir", "/var/lib/trackshift", "--listen", "0.0.0.0:4433", "--http", "0.0.0.0:8480"]
