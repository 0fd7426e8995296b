# syntax=docker/dockerfile:1

# The Stratus image: `stratus serve` as a non-root user. docker-bake.hcl builds it for
# linux/amd64 and linux/arm64, and tests/test_container.py checks this file.

# The builder stage builds the wheel and installs it, with the `fast` extra, into the
# virtual environment /opt/stratus. NOTE: the slim image has no C compiler, so every
# dependency must come as a wheel for the target platform.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stratus ./stratus

# VERSION must equal the version in pyproject.toml, because it becomes the image's tags
# and version label. The build stops when the two differ.
ARG VERSION=0.1.0
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /wheels . \
    && if [ ! -f "/wheels/stratus-${VERSION}-py3-none-any.whl" ]; then \
        echo "VERSION=${VERSION} does not match the wheel built from pyproject.toml: $(ls /wheels)" >&2; \
        exit 1; \
    fi

# --without-pip keeps pip and setuptools out of the environment. The builder's own pip
# installs into it through --python.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip /opt/stratus \
    && python -m pip --python /opt/stratus/bin/python install "/wheels/stratus-${VERSION}-py3-none-any.whl[fast]"

# The final stage must use the same base image as the builder, because the virtual
# environment's python is a symbolic link to the base image's interpreter in /usr/local/bin.
FROM python:3.11-slim-bookworm

# A fixed uid and gid, so that a bind-mounted data directory can be given to them
# (chown 10001:10001) and Kubernetes' runAsNonRoot can check the numeric USER.
RUN groupadd --gid 10001 stratus \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /var/lib/stratus --shell /usr/sbin/nologin stratus \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/stratus

COPY --from=builder /opt/stratus /opt/stratus

# Without S3_ENDPOINT the registry serves, and `stratus push` writes to, the
# repositories under STRATUS_DATA_DIR.
ENV PATH=/opt/stratus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STRATUS_DATA_DIR=/var/lib/stratus
VOLUME /var/lib/stratus
USER 10001:10001
EXPOSE 3000

# The check connects to 127.0.0.1, which the default STRATUS_HOST (0.0.0.0) includes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, os, sys; connection = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PORT', '3000')), timeout=4); connection.request('GET', '/healthz'); sys.exit(connection.getresponse().status != 200)"]

# The labels come last, because a changed build argument invalidates the cache of every
# RUN after its ARG.
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="stratus" \
      org.opencontainers.image.description="A read-only OCI registry that serves container images straight from S3, and a pusher for BuildKit OCI layouts" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}"

# `docker run IMAGE` serves, and `docker run IMAGE push LAYOUT NAME[:TAG]` pushes.
ENTRYPOINT ["stratus"]
CMD ["serve"]
