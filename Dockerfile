# One image for every kprofefe-tasks process: capture and discovery workers, beat, Flower, and the CLI
# (kprofefe / kubectl-profefe).
#
# No ENTRYPOINT, on purpose: the Kubernetes manifests (deploy/) give each process its full `command:` (celery -A
# kprofefe_tasks worker|beat|flower ...), so what runs is readable in one place and `-B` can be checked for; the
# CLI runs without --entrypoint tricks:  docker run --rm IMAGE kprofefe --help
#
# Build with scripts/build-image (CI does; see it for the build arguments and the CA secret). Needs BuildKit for the
# RUN --mount flags; there is deliberately no `# syntax=` line: it makes BuildKit pull a frontend image from a
# registry, and the frontend built into Docker >= 20.10 already knows cache and secret mounts.
#
# Dependencies come only from requirements.lock (exact versions, hash-checked, --no-deps), then the package's own
# wheel with --no-deps: the image runs exactly what CI tested, and nothing is resolved at build time.

# Pinned by tag AND digest, so a rebuild gets the same base until someone bumps both. The digest is the multi-arch
# index digest that several public projects pin for this tag; confirm with
# `docker buildx imagetools inspect python:3.11.14-slim-bookworm` when bumping. Without a registry, CI builds on a
# stand-in made from Debian 12's own packages (python3 3.11, python3-venv, ca-certificates; scripts/build-image).
# Both stages must use the same base: the venv copied between them points at the base's python3.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder
# Only this stage talks to the package index. PIP_INDEX_URL may name a mirror; a CA bundle for it (or for a
# TLS-inspecting proxy) comes in as the build secret `ca_bundle`, so it is never written into a layer.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
SHELL ["/bin/sh", "-eu", "-c"]

# /opt/build holds pip and setuptools for this stage only; the runtime venv /opt/kprofefe is made without pip, so
# the image carries no installer and nothing in it can fetch packages at run time.
RUN python3 -m venv /opt/build \
    && python3 -m venv --without-pip /opt/kprofefe

WORKDIR /src
# The lock files first, so a code change reuses the dependency layer. The cache mount keeps downloads between
# builds without leaving them in a layer.
COPY requirements.lock requirements-build.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements-build.lock \
    && /opt/build/bin/pip --python /opt/kprofefe/bin/python install --require-hashes --no-deps -r requirements.lock

# Only what the wheel is built from (.dockerignore keeps the rest of the context out as well).
COPY pyproject.toml README.md beat_schedule.py ./
COPY kprofefe_tasks ./kprofefe_tasks
# --no-build-isolation: setuptools comes from requirements-build.lock above, not from whatever the index has today.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/kprofefe/bin/python install --no-cache-dir --no-deps --no-index \
       /wheels/kprofefe_tasks-*.whl \
    && /opt/build/bin/pip --python /opt/kprofefe/bin/python check

FROM ${PYTHON_IMAGE}
# DONTWRITEBYTECODE: the root filesystem is read-only in the cluster; pip already compiled the .pyc files at
# install time. UNBUFFERED: log lines reach `kubectl logs` as they are written. PATH is spelled out rather than
# extended: an image made with `docker import` may define none, and "$PATH" would then expand to nothing.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/kprofefe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# A fixed numeric uid/gid (10001, outside the range of distro users) so Kubernetes' runAsNonRoot can verify it
# and volumes can be chowned with fsGroup: 10001.
RUN groupadd --system --gid 10001 kprofefe \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kprofefe \
       --shell /usr/sbin/nologin kprofefe \
    && mkdir -p /var/lib/kprofefe/spool /var/lib/kprofefe/beat \
    && chown -R 10001:10001 /var/lib/kprofefe

# The whole runtime venv in one layer: locked dependencies and the package, no pip, no wheels, no build tools.
COPY --from=builder /opt/kprofefe /opt/kprofefe

USER 10001:10001
WORKDIR /home/kprofefe

# 9808: every process's /metrics and /healthz (KPROFEFE_METRICS_PORT). 5555: Flower.
EXPOSE 9808 5555

CMD ["kprofefe", "--help"]
