#!/usr/bin/env bash
# The accelerator fast path on one NVIDIA GPU, in one run (about 10 minutes on an H100/H200):
#   1. GPT-2 small, context 1024, bf16, batch 16: step time, tokens/s and MFU with each attention implementation;
#   2. the PyTorch peer (nanoGPT's model and bench.py setting: bf16 autocast, fused AdamW, torch.compile) on the
#      same device, same shape; with NANOGPT=<a nanoGPT checkout>, nanoGPT's own bench.py as well;
#   3. the same 124M model at context 8k and 32k (cudnn and flash, the loss in 4096-token chunks).
#
#   OUT=gpu_out PY=python3 bash experiments/benchmarks/gpu_fast_path.sh
#
# Needs jax with CUDA, flax, optax, orbax-checkpoint, ml-collections, grain (lmjax's core install: pip install -e
# '.[gpu]'), and torch for part 2. Everything it prints also lands in $OUT; record the device line, the tables and
# the commands in experiments/benchmarks/README.md. Targets: at least 55% MFU at 1k (989 TFLOP/s dense bf16 peak
# for H100 SXM and H200), ahead of the torch.compile peer.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_fast_path_out}
PY=${PY:-python3}
B=experiments/benchmarks/benchmark.py
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} LMJAX_COMPILE_CACHE=off

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"
} 2>&1 | tee "$OUT/device.txt"

# 1. Attention implementations at 1k (each variant its own process, own compile, own memory peak).
timeout 300 $PY $B --config=configs/gpt2_small.py --config.train.batch_size=16 --vocab_size=50304 --steps=20 \
    --warmup=5 --json_out="$OUT/attention_1k.json" \
    --compare='model.attention_impl=cudnn; model.attention_impl=pallas_gpu; model.attention_impl=flash; model.attention_impl=xla; model.attention_impl=cudnn train.loss_chunk_tokens=4096' \
    2>&1 | tee "$OUT/attention_1k.md"

# 2. The PyTorch peer, torch.compile, same shape and batch.
timeout 150 $PY experiments/nanogpt_shakespeare/torch_peer.py --bench --device=cuda --compile --layers=12 \
    --heads=12 --width=768 --block=1024 --batch=16 --vocab=50304 --bench_steps=20 2>&1 | tee "$OUT/torch_peer_1k.txt"
if [ -n "${NANOGPT:-}" ]; then
  (cd "$NANOGPT" && timeout 150 $PY bench.py --batch_size=16 --real_data=False --compile=True) 2>&1 \
      | tee "$OUT/nanogpt_bench_1k.txt"
fi

# 3. Long context: 8k and 32k, one sequence of 32k (two of 8k) per step.
timeout 240 $PY $B --config=configs/gpt2_small.py --vocab_size=50304 --steps=5 --warmup=2 \
    --json_out="$OUT/long_context.json" \
    --compare='data.seq_len=8192 model.max_len=8192 train.batch_size=2 model.attention_impl=cudnn train.loss_chunk_tokens=4096; data.seq_len=32768 model.max_len=32768 train.batch_size=1 model.attention_impl=cudnn train.loss_chunk_tokens=4096; data.seq_len=32768 model.max_len=32768 train.batch_size=1 model.attention_impl=flash train.loss_chunk_tokens=4096' \
    2>&1 | tee "$OUT/long_context.md"
