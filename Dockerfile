# syntax=docker/dockerfile:1
# govllm's container image: docs/release.md. Build it with `make image` (VARIANT=gpu|cpu),
# which first fills build/wheelhouse/ with the hash-checked wheels of locks/$VARIANT.txt and
# the govllm wheel; the build itself then needs no network and installs nothing unhashed.
#
# One base for both variants: Debian 12's Python 3.11 slim image, pinned by digest. The GPU
# variant needs no CUDA base image: the locked torch/vLLM wheels carry the CUDA user-space
# libraries (nvidia-* wheels in locks/gpu.txt), and the driver is mounted by the NVIDIA
# container toolkit / GPU operator on the node. `tools/image.py pin-base` refreshes the digest.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE_IMAGE} AS build
ARG VARIANT=gpu
ARG VERSION=0.1.0
SHELL ["/bin/sh", "-eu", "-c"]
# The wheelhouse is bind-mounted, never copied: no layer keeps the wheels or a pip cache.
RUN --mount=type=bind,source=build/wheelhouse,target=/wheelhouse \
    python3 -m venv /opt/govllm \
    && /opt/govllm/bin/python -m pip install --no-cache-dir --no-index --find-links=/wheelhouse \
        --only-binary=:all: --require-hashes --no-deps -r "/wheelhouse/${VARIANT}.txt" \
    && /opt/govllm/bin/python -m pip install --no-cache-dir --no-index --find-links=/wheelhouse \
        --no-deps "govllm==${VERSION}" \
    && /opt/govllm/bin/govllm --help > /dev/null

FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=gpu
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/govllm/govllm
LABEL org.opencontainers.image.title="govllm" \
      org.opencontainers.image.description="govllm inference platform: Ray Serve LLM + vLLM behind a tenant-aware OpenAI-compatible router (${VARIANT})" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.govllm.variant="${VARIANT}"
COPY --from=build /opt/govllm /opt/govllm
# HOME and every cache live under /tmp, an emptyDir in the chart (read-only root filesystem).
# NVIDIA_*: what the NVIDIA container toolkit mounts into the GPU variant; inert on CPU.
ENV PATH=/opt/govllm/bin:${PATH} \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
# Numeric, non-root, the chart's securityContext (runAsUser 1000, runAsGroup 100): restricted
# Pod Security admits it without a passwd entry.
USER 1000:100
CMD ["govllm", "--help"]
