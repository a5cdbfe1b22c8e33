# The capi-consumer service image (docs/deploy.md, "The container image").
#
# Two stages on one slim Python base: `build` installs the service and its pinned runtime dependencies
# (constraints.txt, binary wheels only) into a virtual environment; the final stage holds that
# environment and nothing else of the build: no pip, no compiler, no caches, no tests, bench or tooling.
# It runs as a non-root numeric user and needs no writable path but /tmp, so the root filesystem can be
# mounted read-only. The configuration is mounted at /etc/capi-consumer/config.yaml.
#
#   docker build -t capi-consumer .
#   docker build --build-arg BASE_IMAGE=python:3.12-slim-bookworm -t capi-consumer .
#
# BASE_IMAGE must provide `python3` with the venv module (the tests build from a local Debian base).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The runtime dependencies first, in a layer of their own: a change to the service's code reuses it.
# PIP_CONSTRAINT (rather than -c) pins the isolated build environment of the service's wheel as well.
COPY pyproject.toml constraints.txt ./
RUN python3 -m venv /opt/capi-consumer \
    && python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/requirements.txt \
    && /opt/capi-consumer/bin/pip install --only-binary=:all: --requirement /tmp/requirements.txt
COPY README.md ./
COPY consumer/ consumer/
RUN /opt/capi-consumer/bin/pip install --no-deps . \
    && /opt/capi-consumer/bin/pip check \
    && /opt/capi-consumer/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# A read-only root filesystem: no byte code written at run time (it was compiled at install), HOME and
# temporary files in /tmp (the one writable mount), logs unbuffered to stdout.
ENV PATH=/opt/capi-consumer/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin capi \
    && mkdir -p /etc/capi-consumer
COPY --from=build /opt/capi-consumer /opt/capi-consumer
USER 10001:10001
# Prometheus metrics, /healthz and /readyz (metrics.port)
EXPOSE 9108
ENTRYPOINT ["capi-consumer"]
CMD ["run", "--config", "/etc/capi-consumer/config.yaml"]
# Last, so that a new revision reuses every layer above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="capi-consumer" \
      org.opencontainers.image.description="Forwards order and subscription events from Kafka to Meta's Conversions API, at-least-once, with dead-letter topics and replay." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
