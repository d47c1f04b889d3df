# The Klieg platform image: gateway and worker in one image, two commands
#   klieg gateway            (the HTTP gateway; port 8000)
#   klieg worker --pool P    (a worker of pool P)
# BASE is python:3.11-slim for CPU pools and a CUDA runtime image for GPU pools (`klieg images
# build` passes it); on a base without Python 3.11, uv installs one.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV KLIEG_HOME=/var/lib/klieg \
    KLIEG_HOST=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    PATH=/opt/klieg/bin:$PATH
RUN set -eux; \
    if ! command -v python3.11 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
      && rm -rf /var/lib/apt/lists/* \
      && curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin sh \
      && uv python install 3.11 && ln -s "$(uv python find 3.11)" /usr/local/bin/python3.11; \
    fi; \
    python3.11 -m venv /opt/klieg
WORKDIR /src
COPY sdk/ sdk/
COPY platform/ platform/
COPY pyproject.toml README.md ./
# /var/lib/klieg/envs: the env store (a volume in a fleet); /var/lib/klieg/seed: where an env
# image's seeding container mounts that volume (owned by klieg, so a new Docker volume is too)
RUN pip --no-cache-dir install ./sdk . && mkdir -p /var/lib/klieg/envs /var/lib/klieg/seed && useradd --system --uid 10001 --home-dir /var/lib/klieg klieg && chown -R klieg /var/lib/klieg
USER klieg
WORKDIR /var/lib/klieg
EXPOSE 8000
ENTRYPOINT ["klieg"]
CMD ["gateway"]
