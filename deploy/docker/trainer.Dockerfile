# syntax=docker/dockerfile:1
# Trainer (Kubernetes training Job): `botfactory train BOT_DIR --out MODEL_DIR`, then
# `botfactory publish MODEL_DIR` to the NATS object store. Carries torch + transformers (the
# `train` extra) and the packaged all-MiniLM-L6-v2 base encoder; never used for serving.
# Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t botfactory/trainer .
# For a CPU-only torch (much smaller), pass PyTorch's CPU wheel index:
#   --build-arg TORCH_INDEX_URL=<CPU wheel index URL>

FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY botfactory ./botfactory
# torch first (same pin as pyproject.toml), from TORCH_INDEX_URL when given; then the package
# with the `train` extra, which finds torch already satisfied. (DL3013: the local package's own
# dependencies are pinned in pyproject.toml.)
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
    else \
        pip install --no-cache-dir "torch==2.13.0"; \
    fi \
    && pip install --no-cache-dir ".[train]"

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="botfactory-trainer" \
      org.opencontainers.image.description="botfactory training job (torch, ONNX export, publish)"
RUN groupadd --system --gid 10001 botfactory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin botfactory
COPY --from=build /opt/venv /opt/venv
# The repository's bot folders (the training Job's default input; mount your own over it).
COPY bots /opt/botfactory/bots
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["botfactory"]
CMD ["--help"]
