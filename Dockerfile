# SPDX-License-Identifier: Apache-2.0
#
# niaffine BIDS-App image: `docker run --gpus all IMAGE /data /out participant`.
#
# The base image is a build argument used by both stages. The default is a CUDA base (torch from
# PyPI is its CUDA build and brings the CUDA libraries as wheels); a CPU-only Debian/Ubuntu base
# works with the same file, e.g.
#   podman build --build-arg BASE_IMAGE=debian:bookworm-slim \
#                --build-arg PIP_FIND_LINKS=/wheels -v /opt/wheels:/wheels:ro ...
# where /wheels holds a CPU torch wheel (or TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu).
# docs/containers.md has the commands that were run and scripts/test-container.sh tests them.
# Needs a Debian/Ubuntu base with python3 >= 3.10 (bookworm: 3.11, noble: 3.12).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

# Versions differ between Debian and Ubuntu bases: apt packages are not pinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# pip settings for the build only (ARG, not ENV: nothing stays in the image):
#   PIP_CERT         a CA bundle mounted at build time (machines that intercept TLS)
#   PIP_FIND_LINKS   a folder of wheels mounted at build time (e.g. a CPU torch wheel)
#   PIP_INDEX_URL / PIP_EXTRA_INDEX_URL   a mirror
#   TORCH_INDEX_URL  where torch comes from, e.g. https://download.pytorch.org/whl/cu128 or /cpu;
#                    empty: PyPI (the CUDA build on Linux x86_64) or PIP_FIND_LINKS
ARG PIP_CERT
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/niaffine/bin:$PATH

# torch is pinned through TORCH_VERSION (hadolint cannot see through the variable).
# hadolint ignore=DL3013
RUN python3 -m venv /opt/niaffine \
    && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The source tree with its .git (see .dockerignore): setuptools-scm takes the version and the
# packaged data files from git. VERSION overrides the version (e.g. a release tag).
ARG VERSION=
COPY . /src
WORKDIR /src
RUN if [ -n "${VERSION}" ]; then export SETUPTOOLS_SCM_PRETEND_VERSION="${VERSION}"; fi \
    && git config --global --add safe.directory /src \
    && pip wheel --no-deps --wheel-dir /dist /src \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt /dist/niaffine-*.whl \
    && python /src/containers/check_image.py

# -------------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/niaffine /opt/niaffine
COPY --from=build /src/containers/check_image.py /opt/niaffine/share/niaffine/check_image.py

# A non-root user whose home is writable by any uid (`-u $(id -u):$(id -g)`, Apptainer).
# Threads: each registration node sets its torch threads from --omp-nthreads; 1 at process level
# keeps MultiProc's parallel nodes from oversubscribing the CPUs.
ENV HOME=/home/niaffine \
    PATH=/opt/niaffine/bin:$PATH \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MPLCONFIGDIR=/home/niaffine/.config/matplotlib \
    NIPYPE_NO_ET=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN useradd --create-home --home-dir /home/niaffine --shell /bin/bash \
        --uid 10001 --user-group niaffine \
    && mkdir -p "$MPLCONFIGDIR" \
    && python -c "import matplotlib.font_manager" \
    && chmod -R a+rwX /home/niaffine

USER 10001:10001
WORKDIR /tmp

ARG VERSION=
ARG VCS_REF=
ARG BUILD_DATE=
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="niaffine" \
      org.opencontainers.image.description="Fast, correct affine registration for brain MRI (BIDS-App)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENTRYPOINT ["niaffine"]
CMD ["--help"]
