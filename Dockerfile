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
# PORT is read only by the HEALTHCHECK below: set it to the service's port (5001, 5002).

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
EXPOSE 5000 5001 5002

# Any HTTP answer under 500 counts: the gateway answers GET /v2/ with 200, while blob-service
# and manifest-service (reached only through the gateway) have no /v2/ route and answer 404.
# urllib.request.urlopen would raise on that 404, hence http.client. Services without HTTP
# (janitor, migrate) disable or override this check where they are started.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PORT', '5000')), timeout=4); c.request('GET', '/v2/'); sys.exit(0 if c.getresponse().status < 500 else 1)"

# The public process by default; every other one is started with its own command.
CMD ["python", "-m", "uvicorn", "api_gateway.app:create_app", "--factory", \
     "--host", "0.0.0.0", "--port", "5000", "--loop", "uvloop", "--http", "httptools", \
     "--no-access-log", "--log-level", "info", "--timeout-graceful-shutdown", "30"]
