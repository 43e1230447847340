# One image for every role of Tide, chosen by the command:
#   api (gunicorn) | worker | beat | flower | exporter | operator | migrate
# Each role exec()s its program, so gunicorn or celery is PID 1 and receives SIGTERM
# directly; both reap their own children, so no init shim is needed.
# Plain Dockerfile syntax (no `# syntax=` line): any builder reads it without fetching a
# frontend image from a registry. scripts/image-build.sh builds it with podman alone.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/tide
# Dependencies first, read from pyproject.toml alone: this layer is rebuilt when they
# change, not on every edit of Tide's own code. EXTRAS (comma-separated) adds optional
# dependencies; no role of the image needs one (plots and the embedded Redis stay out).
# The platform depends on the integration (tide-celery), installed from the same checkout
# in this layer too: it is small and its requirement is met by the directory, never by
# the package index.
ARG EXTRAS=""
COPY pyproject.toml ./
COPY integration ./integration
RUN python -c 'import sys, tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; optional = project.get("optional-dependencies", {}); print(*project["dependencies"], *(d for e in sys.argv[1].split(",") if e for d in optional[e]), sep="\n")' "$EXTRAS" \
        > /tmp/requirements.txt \
    && /opt/tide/bin/pip install ./integration -r /tmp/requirements.txt
COPY README.md ./
COPY app ./app
COPY operator ./operator
# A regular (non-editable) install: the runtime stage gets the venv and nothing else,
# not even the installers (no role installs anything at run time).
RUN /opt/tide/bin/pip install --no-deps . \
    && /opt/tide/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="tide" \
      org.opencontainers.image.description="Django + Celery platform with autoscaled workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tide/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=tide.settings.production \
    TMPDIR=/tmp
COPY --from=build /opt/tide /opt/tide
# An empty working directory owned by root: gunicorn and `celery -A` put the working
# directory first on sys.path, so a writable one (/tmp) would let any file there named
# like a module (tide.py) replace Tide's own code.
WORKDIR /srv/tide
# A numeric, non-root user: Kubernetes' runAsNonRoot can verify a number, not a name.
# The image has no passwd entry for it, as in a pod.
USER 10001:10001
# api 8000, flower 5555, exporter 9808, operator liveness 8080 and metrics 9091.
EXPOSE 8000 5555 9808 8080 9091
ENTRYPOINT ["tide"]
CMD ["api"]
