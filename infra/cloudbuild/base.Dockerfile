# The example base image that cloudbuild.yaml builds: Debian slim, patched at build time.
# Rebuilding it (with --pull) is how a security fix becomes a new base digest; baseroll then
# rebases every app built on the previous digest instead of rebuilding each app.
ARG DEBIAN=debian:bookworm-slim
FROM ${DEBIAN}

# busybox gives apps a static HTTP server (app.Dockerfile) without a language runtime.
RUN apt-get update \
 && apt-get upgrade -y --no-install-recommends \
 && apt-get install -y --no-install-recommends ca-certificates busybox \
 && rm -rf /var/lib/apt/lists/*

# Apps run unprivileged; nothing in the base needs root at run time.
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin app
