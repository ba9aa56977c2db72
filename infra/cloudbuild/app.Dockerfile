# An example tenant app on the base built by cloudbuild.yaml (see app.cloudbuild.yaml).
# BASE is the base track's tag (host/repo:tag), BASE_DIGEST the digest that tag named when the
# app was built: FROM uses the digest (the tag is only informative there), and the two labels
# record the pair so baseroll can tell which base, and which version of it, the app is on.
ARG BASE
ARG BASE_DIGEST
FROM ${BASE}@${BASE_DIGEST}
ARG BASE
ARG BASE_DIGEST
LABEL org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.base.digest="${BASE_DIGEST}"

COPY app/index.html /srv/www/index.html
USER 10001
ENV PORT=8080
EXPOSE 8080
# Cloud Run sets $PORT; the shell form expands it at start.
CMD ["sh", "-c", "exec busybox httpd -f -v -p \"${PORT}\" -h /srv/www"]
