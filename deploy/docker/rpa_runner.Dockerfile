# syntax=docker/dockerfile:1
# RPA runner (services/rpa_runner): durable workflow runs from the RPA work queue + gRPC API.
# Browser steps drive Debian's chromium through Playwright (BOTFACTORY_RPA_CHROMIUM_PATH).
# Build from the repository root:
#   docker build -f deploy/docker/rpa_runner.Dockerfile -t botfactory/rpa-runner .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
COPY botfactory ./botfactory
# Playwright (same pin as pyproject.toml) drives the system chromium; its own browser
# downloads are never used (`playwright install` is not run).
RUN pip install --no-cache-dir . "playwright==1.65.2"

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="botfactory-rpa-runner" \
      org.opencontainers.image.description="botfactory RPA runner (workflows, headless chromium)"
# Chromium from Debian (security updates come with it, so its version follows the base image;
# pin the base image by digest for reproducible builds).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-liberation \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 botfactory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin botfactory
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    BOTFACTORY_RPA_CHROMIUM_PATH=/usr/bin/chromium \
    BOTFACTORY_RPA_SCREENSHOTS_DIR=/var/lib/botfactory/screenshots \
    BOTFACTORY_RPA_GRPC_HOST=0.0.0.0 \
    BOTFACTORY_RPA_METRICS_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 50081 9104
ENTRYPOINT ["python", "-m", "services.rpa_runner"]
