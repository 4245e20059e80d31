# syntax=docker/dockerfile:1.6
# GPU image: NGC PyTorch (CUDA, NCCL, cuDNN, Transformer Engine and NVIDIA apex prebuilt) + this project.
# Build: docker build -t megatron-qwen .   Run on a cluster through enroot/pyxis (see README, "Slurm").
# NGC 25.x images ship Python 3.12, which megatron-core 0.19 needs.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    NCCL_ASYNC_ERROR_HANDLING=1

WORKDIR /workspace/megatron_qwen
COPY pyproject.toml README.md ./
COPY megatron_qwen ./megatron_qwen
COPY tools ./tools
COPY hydra ./hydra
COPY examples ./examples

# Keep the image's own torch, Transformer Engine and apex builds: pin them as constraints so that
# installing the project never replaces them with wheels from the package index.
# (Never `pip install apex`: that name on the public index is an unrelated package.)
RUN python - <<'PY' > /tmp/keep-image-builds.txt
import importlib.metadata as md
for name in ("torch", "transformer_engine", "transformer-engine", "apex"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
RUN PIP_CONSTRAINT=/tmp/keep-image-builds.txt pip install --no-cache-dir -e ".[test]" \
 && python -c "import torch, megatron.core, transformer_engine; print('torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| TE', transformer_engine.__version__)"

CMD ["megatron-qwen", "--help"]
