# syntax=docker/dockerfile:1
# One image for every kprofefe-tasks process: capture and discovery workers, beat, Flower, and the CLI
# (kprofefe / kubectl-profefe).
#
# No ENTRYPOINT, on purpose: the Kubernetes manifests (deploy/) give each process its full `command:` (celery -A
# kprofefe_tasks worker|beat|flower ...), so what runs is readable in one place and `-B` can be checked for; the
# CLI runs without --entrypoint tricks:  docker run --rm IMAGE kprofefe --help
#
# Needs BuildKit (Docker >= 23 uses it by default) for the bind mount below.

# Pinned by tag AND digest, so a rebuild gets the same base until someone bumps both. The digest is the multi-arch
# index digest that several public projects pin for this tag; it was not pulled from here (no Docker engine):
# confirm with `docker buildx imagetools inspect python:3.11.14-slim-bookworm` when bumping.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# Wheels for the package and every dependency. All of them ship manylinux wheels for CPython 3.11 (gevent,
# greenlet, zope.interface included), so no compiler is needed in either stage. The cache mount keeps downloads
# between builds without leaving them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# DONTWRITEBYTECODE: the root filesystem is read-only in the cluster; pip already compiled the .pyc files at
# install time. UNBUFFERED: log lines reach `kubectl logs` as they are written.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid (10001, outside the range of distro users) so Kubernetes' runAsNonRoot can verify it
# and volumes can be chowned with fsGroup: 10001.
RUN groupadd --system --gid 10001 kprofefe \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kprofefe \
       --shell /usr/sbin/nologin kprofefe \
    && mkdir -p /var/lib/kprofefe/spool /var/lib/kprofefe/beat \
    && chown -R 10001:10001 /var/lib/kprofefe

# Installed from the builder's wheels through a bind mount: the wheels never become a layer of this image, and
# --no-index proves the builder produced everything needed.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/kprofefe_tasks-*.whl

USER 10001:10001
WORKDIR /home/kprofefe

# 9808: every process's /metrics and /healthz (KPROFEFE_METRICS_PORT). 5555: Flower.
EXPOSE 9808 5555

CMD ["kprofefe", "--help"]
