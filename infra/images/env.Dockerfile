# One env image per env key: the platform image plus that uv-built environment, published in
# $KLIEG_HOME/envs/<key> with its marker, so a worker on a new node finds it built instead of
# resolving and downloading it. `klieg images build` writes env.json (python, lock, key).
ARG PLATFORM
FROM ${PLATFORM}
COPY env.json /tmp/klieg-env.json
RUN python -m klieg_platform.packager /tmp/klieg-env.json
