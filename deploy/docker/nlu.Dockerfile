# syntax=docker/dockerfile:1
# NLU service (services/nlu): gRPC Parse/ParseBatch on onnxruntime + tokenizers.
# The package is installed WITHOUT the `train` extra: no torch, no transformers in this image.
# Build from the repository root: docker build -f deploy/docker/nlu.Dockerfile -t botfactory/nlu .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY botfactory ./botfactory
# Serving dependencies only (binary wheels; nothing is compiled).
RUN pip install --no-cache-dir . \
    && ! pip show torch transformers >/dev/null 2>&1

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="botfactory-nlu" \
      org.opencontainers.image.description="botfactory NLU service (onnxruntime, no torch)"
RUN groupadd --system --gid 10001 botfactory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin botfactory
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BOTFACTORY_NLU_GRPC_HOST=0.0.0.0 \
    BOTFACTORY_NLU_METRICS_HOST=0.0.0.0 \
    BOTFACTORY_NLU_MODEL_CACHE_DIR=/var/cache/botfactory/models
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "services.nlu"]
