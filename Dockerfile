# syntax=docker/dockerfile:1
# Build: docker build -t switchboard .
# Run:   docker run -p 8080:8080 --env-file .env switchboard
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# gcc is in the image (webrtc-vad and aws-lc build C code); no OpenSSL is needed.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY fixtures ./fixtures
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchboard \
    && cp target/release/switchboard /switchboard \
    && strip /switchboard

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=build /switchboard /usr/local/bin/switchboard
COPY tenants.toml ./tenants.toml
COPY prompts ./prompts
RUN mkdir -p /app/data && chown switchboard:switchboard /app/data
USER switchboard
ENV SWITCHBOARD_BIND=0.0.0.0:8080 \
    TENANTS_FILE=/app/tenants.toml \
    SWITCHBOARD_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/bin/tini", "--", "switchboard"]
CMD ["serve"]
