# One image for every process of the registry: api-gateway, blob-service, manifest-service,
# janitor (and the one-shot migration). The command picks the process; the commands are those
# shared/processes.py builds, written out in docker-compose.yml and deploy/k8s/base/.
#
#   docker build -t registry:latest .
#
# Note: "registry:latest" is also the name of Docker Hub's official Distribution image; push
# this one under your own repository name rather than relying on the short name.

ARG PYTHON_IMAGE=python:3.11-slim
# ---- builder: pinned dependencies and the project, in a venv under /opt/venv ---------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# crcmod (a dependency of oss2) ships no wheel; its C extension is compiled here, and the
# compiler stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The lock first, so that a source change does not reinstall the dependencies.
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps .

# ---- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=5000
# PORT is read only by the HEALTHCHECK below: set it to the service's port (5001, 5002) when
# running one of those with `docker run` (docker-compose.yml gives each its own healthcheck).

RUN groupadd --system --gid 10001 registry \
    && useradd --system --uid 10001 --gid registry --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin registry \
    && mkdir -p /var/lib/registry \
    && chown registry:registry /var/lib/registry
# /var/lib/registry is the file storage root (REGISTRY_STORAGE_URL=file:///var/lib/registry);
# a fresh named volume mounted there takes this ownership.

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The source stays owned by root: the registry user reads it and writes nothing here.
COPY pyproject.toml requirements.lock ./
COPY shared ./shared
COPY services ./services

USER 10001:10001
EXPOSE 5000 5001 5002 5003 5555

# Liveness: GET /healthz answers 200 while the process runs (every HTTP service has it; the
# image has no curl, and urllib raises on anything but 2xx). Services without HTTP (janitor,
# beat, migrate) disable or override this check where they are started; Kubernetes ignores it
# and probes /healthz and /readyz itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5000'), timeout=4)"

# The public process by default; every other one is started with its own command.
CMD ["python", "-m", "uvicorn", "api_gateway.app:create_app", "--factory", \
     "--host", "0.0.0.0", "--port", "5000", "--loop", "uvloop", "--http", "httptools", \
     "--no-access-log", "--log-level", "info", "--timeout-graceful-shutdown", "30"]
