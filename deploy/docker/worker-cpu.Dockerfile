# syntax=docker/dockerfile:1
# The GPU worker's contract on CPU (compose, demos, CI of a deployment): the `gpu` extra as the lock pins it, torch its
# CPU build (`torch==2.13.0+cpu`, by hash) from PyTorch's CPU index, so no CUDA wheels are pulled; every other package
# must match its hash from the lock too, whichever index serves it. linux/amd64 only: the lock holds the hash of that
# one torch wheel. With no MODEL_DIR it builds the tiny random-weight SDXL on first use; mount real weights and set
# MODEL_DIR for anything else. The GPU worker itself runs on Modal (deploy/modal/README.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.txt requirements/worker-cpu.txt ./requirements/
RUN python -m venv /opt/venv /opt/build \
    && /opt/venv/bin/pip install --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/worker-cpu.txt \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY logsafe ./logsafe
COPY services ./services
COPY gpu ./gpu
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation -w /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/vixenbliss-*.whl

FROM ${PYTHON_IMAGE} AS worker-cpu
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/vixenbliss --create-home --shell /usr/sbin/nologin vixen
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1
WORKDIR /var/lib/vixenbliss
USER 10001:10001
EXPOSE 8003
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8003/healthz', timeout=2)"]
CMD ["python", "-m", "gpu.serve.server", "--host", "0.0.0.0", "--port", "8003"]
