# syntax=docker/dockerfile:1
# One image for every role of Tide, chosen by the command:
#   api (gunicorn) | worker | beat | flower | exporter | operator | migrate
# Each role exec()s its program, so gunicorn or celery is PID 1 and receives SIGTERM
# directly; both reap their own children, so no init shim is needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/tide
COPY pyproject.toml README.md ./
COPY app ./app
COPY operator ./operator
COPY integration ./integration
# A regular (non-editable) install: the runtime stage gets the venv and nothing else. The
# platform depends on the integration (tide-celery), installed from the same checkout.
RUN /opt/tide/bin/pip install ./integration .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tide" \
      org.opencontainers.image.description="Django + Celery platform with autoscaled workers"
ENV PATH=/opt/tide/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=tide.settings.production \
    TMPDIR=/tmp
COPY --from=build /opt/tide /opt/tide
# A numeric, non-root user: Kubernetes' runAsNonRoot can verify a number, not a name.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 5555 9808 8080
ENTRYPOINT ["tide"]
CMD ["api"]
