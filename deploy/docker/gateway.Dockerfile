# syntax=docker/dockerfile:1
# Gateway (services/gateway): public HTTP/WebSocket + gRPC API, admin API, web chat page.
# Build from the repository root: docker build -f deploy/docker/gateway.Dockerfile -t botfactory/gateway .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY botfactory ./botfactory
RUN pip install --no-cache-dir .
# The web chat page is not package data of the wheel: put it where the gateway looks for it
# (services/gateway/static beside the installed package).
RUN cp -r services/gateway/static "$(python -c 'import services.gateway, os; print(os.path.dirname(services.gateway.__file__))')/static"

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="botfactory-gateway" \
      org.opencontainers.image.description="botfactory gateway (HTTP/WebSocket, gRPC, admin API)"
RUN groupadd --system --gid 10001 botfactory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin botfactory
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BOTFACTORY_GATEWAY_HTTP_HOST=0.0.0.0 \
    BOTFACTORY_GATEWAY_GRPC_HOST=0.0.0.0 \
    BOTFACTORY_GATEWAY_METRICS_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 50071 9102
ENTRYPOINT ["python", "-m", "services.gateway"]
