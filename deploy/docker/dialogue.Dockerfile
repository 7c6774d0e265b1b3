# syntax=docker/dockerfile:1
# Dialogue service (services/dialogue): JetStream consumer of conversation messages + admin gRPC.
# Build from the repository root: docker build -f deploy/docker/dialogue.Dockerfile -t botfactory/dialogue .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY botfactory ./botfactory
RUN pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="botfactory-dialogue" \
      org.opencontainers.image.description="botfactory dialogue worker (JetStream consumer, admin gRPC)"
RUN groupadd --system --gid 10001 botfactory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin botfactory
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BOTFACTORY_DIALOGUE_GRPC_HOST=0.0.0.0 \
    BOTFACTORY_DIALOGUE_METRICS_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 50061 9103
ENTRYPOINT ["python", "-m", "services.dialogue"]
