# The fetcher's image: a slim runtime with a virtual environment built from a local wheelhouse.
# Build it with `poetry run docker-build` (makes ./wheelhouse for the base's Python, then runs
# `docker build`); the build itself needs no network. PYTHON_IMAGE is any image with python3 (+venv);
# default python:3.11-slim. The image carries the mock API's dependencies too (`fetcher demo`).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
COPY wheelhouse/ /wheelhouse/
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Each step must succeed: no `|| true` here, a failed install fails the build.
RUN python3 -m venv /opt/fetcher \
 && /opt/fetcher/bin/pip install --no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt \
 && /opt/fetcher/bin/fetcher --version \
 && /opt/fetcher/bin/python -c "import fastapi, uvicorn, python_multipart, mock_api.server" \
 && /opt/fetcher/bin/pip uninstall -y -q pip setuptools

FROM ${PYTHON_IMAGE}
ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="decode-fetcher" \
      org.opencontainers.image.description="DECODE OpenCloud job fetcher" \
      org.opencontainers.image.version="${VERSION}" \
      org.decode-opencloud.fetcher.daemon="1"
COPY --from=build /opt/fetcher /opt/fetcher
# A plain `docker stop` (10 s grace) ends cleanly: drain for 1 s, then stop jobs with a 5 s grace.
# For a real drain, `docker stop -t 3600` and DRAIN_TIMEOUT_S=3500.
ENV PATH=/opt/fetcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PATH_BASE=/data \
    DRAIN_TIMEOUT_S=1 \
    STOP_GRACE_S=5
WORKDIR /data
HEALTHCHECK --interval=60s --timeout=15s --start-period=120s --retries=3 CMD ["fetcher", "health"]
ENTRYPOINT ["fetcher"]
CMD ["run"]
