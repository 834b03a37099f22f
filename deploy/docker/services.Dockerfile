# syntax=docker/dockerfile:1
# The three services, one image each, built from one file: `docker build -f deploy/docker/services.Dockerfile
# --target content .` (or identity, inference-gateway). Only the `services` extra is installed: no torch. Every
# package is the lock's, checked against its hash (requirements/ is exported from uv.lock: docs/deploy.md).
# The base by tag and digest (docs/deploy.md § Images: pinned by digest; scripts/image_digests.py re-resolves it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependencies first, so that a change to the code reuses this layer.
COPY requirements/build.txt requirements/services.txt ./requirements/
RUN python -m venv /opt/venv /opt/build \
    && /opt/venv/bin/pip install --require-hashes -r requirements/services.txt \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY logsafe ./logsafe
COPY services ./services
# The project's own wheel, built by the locked setuptools (no build isolation, so nothing unpinned is fetched).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation -w /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/vixenbliss-*.whl

FROM ${PYTHON_IMAGE} AS runtime
# broker/: where `python -m services.tools.broker_definitions` writes in compose (a named volume mounted there
# takes this directory's owner, so the non-root user can write it).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/vixenbliss --create-home --shell /usr/sbin/nologin vixen \
    && install -d -o 10001 -g 10001 /var/lib/vixenbliss/broker
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LOG_JSON=true
WORKDIR /var/lib/vixenbliss
USER 10001:10001

FROM runtime AS content
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "services.content", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS identity
EXPOSE 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
CMD ["python", "-m", "services.identity", "--host", "0.0.0.0", "--port", "8001"]

FROM runtime AS inference-gateway
EXPOSE 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/healthz', timeout=2)"]
CMD ["python", "-m", "services.inference_gateway", "--host", "0.0.0.0", "--port", "8002"]
