#!/usr/bin/env bash
# Environment of the T2I-CompBench++ evaluator server, in the order that works: torch first,
# then the pinned requirements, then detectron2 built against that torch (its setup.py imports
# torch, so it cannot be in the same `pip install -r`, and needs --no-build-isolation).
#   servers/install_t2i_compbench.sh .venv-t2icb            # GPUs up to sm_86 (and sm_89: Ada)
#   TORCH_INDEX=https://download.pytorch.org/whl/cu118 TORCH_CUDA_ARCH_LIST=9.0 \
#     servers/install_t2i_compbench.sh .venv-t2icb          # Hopper: CUDA 11.8 torch + CUDA 11.8 toolkit (nvcc)
set -euo pipefail
VENV=${1:?usage: servers/install_t2i_compbench.sh VENV}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3.9}
$PY -m venv "$VENV"
"$VENV/bin/pip" install --upgrade "pip<24.1" wheel "setuptools<70"
if [ -n "${TORCH_INDEX:-}" ]; then
  "$VENV/bin/pip" install torch==2.0.1 torchvision==0.15.2 numpy==1.25.0 --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple
else
  "$VENV/bin/pip" install torch==2.0.1 torchvision==0.15.2 numpy==1.25.0
fi
"$VENV/bin/pip" install -r "$HERE/requirements-t2i_compbench.txt"
FORCE_CUDA=${FORCE_CUDA:-1} "$VENV/bin/pip" install --no-build-isolation \
  "detectron2 @ git+https://github.com/facebookresearch/detectron2.git@5aeb252b194b93dc2879b4ac34bc51a31b5aee13"
"$VENV/bin/python" -c "import torch, detectron2, clip, spacy; spacy.load('en_core_web_sm'); print('ok', torch.__version__, torch.cuda.get_arch_list())"
