# syntax=docker/dockerfile:1.7
# The retrieval server (`mem1 serve-retrieval`): POST /retrieve in the reference API format, GET /healthz.
# BM25, dense or hybrid (--kind; auto = as the data dir was composed); the dense index is read from
# /data/index. The embedded encoder (all-MiniLM-L6-v2) ships in the image; a hub encoder (E5) is
# downloaded into HF_HOME at start unless HF_HUB_OFFLINE=1.
# Built on the CPU base image: docker buildx build -f images/retrieval.Dockerfile \
#   --build-arg BASE_IMAGE=ghcr.io/mem1-pipelines/mem1-base:TAG -t mem1-retrieval:TAG .
ARG BASE_IMAGE=ghcr.io/mem1-pipelines/mem1-base:0.1.0
FROM ${BASE_IMAGE}
ENV MEM1_RETRIEVAL_PORT=8000 \
    MEM1_CORPUS_DIR=/data
EXPOSE 8000
USER 1000:1000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['MEM1_RETRIEVAL_PORT'], timeout=4)"]
ENTRYPOINT ["mem1", "serve-retrieval"]
CMD ["--data-dir", "/data", "--kind", "auto", "--host", "0.0.0.0", "--port", "8000"]
