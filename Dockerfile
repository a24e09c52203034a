# The harness's pinned GPU stack, for a local GPU machine and for Modal (harness/launch.py builds its image
# from this file, so both run the same stack). Versions: harness/gpu-requirements.txt and, for every package
# they pull in, harness/gpu-constraints.txt; CUDA and Python: here.
# The harness itself is not copied in: mount the repository at /work, so that code, recipes, data, results
# and checkpoints are the ones of your checkout (Modal adds them itself).
#   docker build -t harness .
#   docker run --gpus all --rm --ipc=host -v "$PWD":/work -v ~/.cache/huggingface:/hf -e HF_HOME=/hf \
#       harness harness run modernbert-emotion-bf16
# The devel image (nvcc, headers) lets DeepSpeed compile its ops on first use (CPU Adam for hardware.offload).
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
# git: the result files record the commit of the mounted checkout (owned by another user, hence safe.directory).
# RDMA user space, as Modal's cluster examples install it (libibverbs-dev brings the device providers): without it
# NCCL finds no RDMA device and falls back to TCP between nodes without an error.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev python3.12-venv git \
        libibverbs-dev libibverbs1 libhwloc15 libnl-route-3-200 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && git config --system --add safe.directory '*'

COPY harness/gpu-requirements.txt harness/gpu-constraints.txt /tmp/
# torch (and setuptools) first: DeepSpeed's setup imports torch, so it builds without isolation; DS_BUILD_OPS=0
# leaves its CUDA ops to be compiled when a run first needs one. -c: every other package at its locked version.
RUN pip install -c /tmp/gpu-constraints.txt $(grep -E '^(torch|setuptools)==' /tmp/gpu-requirements.txt) \
    && DS_BUILD_OPS=0 pip install --no-build-isolation -c /tmp/gpu-constraints.txt -r /tmp/gpu-requirements.txt

# `harness` runs the mounted checkout: python -m puts the working directory, /work, on the import path
WORKDIR /work
RUN printf '#!/bin/sh\nexec python -m harness.cli "$@"\n' > /usr/local/bin/harness && chmod +x /usr/local/bin/harness
