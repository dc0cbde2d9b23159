r"""A PyTorch peer for the side-by-side: nanoGPT's CPU Shakespeare recipe written directly in PyTorch.

  python experiments/nanogpt_shakespeare/torch_peer.py --text=PATH/tinyshakespeare.txt [--compile]

This is NOT nanoGPT. It stands in for it where a nanoGPT checkout is not available (benchmark.py runs the real
one when given --nanogpt_dir). It implements the same model and loop from the recipe's description, with the
operations nanoGPT uses, so its step costs what nanoGPT's step costs:

  model   token + learned position embeddings; 4 pre-LayerNorm blocks (LayerNorm without bias), one fused
          c_attn Linear(D, 3D) without bias, torch.nn.functional.scaled_dot_product_attention(is_causal=True),
          c_proj, and a Linear(D, 4D) -> exact GELU -> Linear(4D, D) MLP; a final LayerNorm; logits through the
          token embedding (tied), cross-entropy over every position, float32 on the CPU;
  init    normal(0, 0.02), the residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2);
  optim   AdamW(lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on tensors of rank >= 2, 0 otherwise), gradients
          clipped to norm 1.0, linear warmup over 100 iterations then cosine to 1e-4 at iteration 2000;
  data    the file's characters as ids (sorted vocabulary), first 90% train, last 10% validation; each batch 12
          windows of 64 at uniform random offsets (numpy), the next batch drawn while the step runs;
  loop    2000 iterations; every 250 (and at the end) the mean loss of 20 random batches of each split; a
          `loss.item()` host sync every iteration, timed like nanoGPT's `time` (evaluation iterations excluded
          by the caller).

It prints nanoGPT's log lines ('iter N: loss X, time Yms', 'step N: train loss A, val loss B') and, last, the
loss over every validation token in consecutive 64-token windows ('full val loss X'), the measure lmjax reports.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLOCK, BATCH, LAYERS, HEADS, WIDTH, ITERS = 64, 12, 4, 4, 128, 2000  # the recipe; --bench may change the sizes
LR, MIN_LR, WARMUP, EVAL_EVERY, EVAL_ITERS = 1e-3, 1e-4, 100, 250, 20


class Block(nn.Module):
  def __init__(self):
    super().__init__()
    self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
    self.c_attn = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
    self.attn_proj = nn.Linear(WIDTH, WIDTH, bias=False)
    self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
    self.c_fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
    self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x):
    B, T, C = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
    heads = lambda t: t.view(B, T, HEADS, C // HEADS).transpose(1, 2)
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Gpt(nn.Module):
  def __init__(self, vocab: int):
    super().__init__()
    self.wte = nn.Embedding(vocab, WIDTH)
    self.wpe = nn.Embedding(BLOCK, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.ln_f = nn.LayerNorm(WIDTH, bias=False)
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith("proj.weight") else 0.02
        torch.nn.init.normal_(p, mean=0.0, std=std)

  def forward(self, idx, targets):
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
    for block in self.blocks:
      x = block(x)
    logits = F.linear(self.ln_f(x), self.wte.weight)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def learning_rate(it: int) -> float:
  if it < WARMUP:
    return LR * (it + 1) / (WARMUP + 1)
  ratio = min(1.0, (it - WARMUP) / (ITERS - WARMUP))
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def bench(args) -> None:
  """nanoGPT's bench.py setting: random tokens, a fixed batch, bf16 autocast and fused AdamW on CUDA; prints the time
  per iteration and the MFU against --peak_tflops with nanoGPT's FLOPs formula (6N + 12 * layers * width * block)."""
  device = torch.device(args.device)
  cuda = device.type == "cuda"
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  model = Gpt(args.vocab).to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
  step_fn = torch.compile(model) if args.compile else model
  x = torch.randint(args.vocab, (BATCH, BLOCK), device=device)
  y = torch.randint(args.vocab, (BATCH, BLOCK), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
  times = []
  for it in range(args.bench_steps + 5):
    t0 = time.perf_counter()
    with autocast:
      loss = step_fn(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()  # the host sync nanoGPT's timing includes
    if it >= 5:
      times.append(time.perf_counter() - t0)
  n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
  flops = 6 * n + 12 * LAYERS * WIDTH * BLOCK
  ms = 1000 * float(np.median(times))
  tflops = flops * BATCH * BLOCK / (ms / 1000) / 1e12
  print(f"torch peer bench: {LAYERS} layers x {WIDTH}, block {BLOCK}, batch {BATCH}, compile={args.compile}: "
        f"time per iteration {ms:.2f} ms, {BATCH * BLOCK / ms * 1000:,.0f} tokens/s, {tflops:.1f} TFLOP/s, "
        f"MFU {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:g}", flush=True)


def main() -> None:
  global BLOCK, BATCH, LAYERS, HEADS, WIDTH, ITERS  # pylint: disable=global-statement
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--text", help="the training text (the recipe); not needed with --bench")
  parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
  parser.add_argument("--seed", type=int, default=1337)
  parser.add_argument("--bench", action="store_true", help="time steps on random tokens instead of training")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--layers", type=int, default=LAYERS)
  parser.add_argument("--heads", type=int, default=HEADS)
  parser.add_argument("--width", type=int, default=WIDTH)
  parser.add_argument("--block", type=int, default=BLOCK)
  parser.add_argument("--batch", type=int, default=BATCH)
  parser.add_argument("--vocab", type=int, default=50304, help="--bench only")
  parser.add_argument("--bench_steps", type=int, default=20)
  parser.add_argument("--iters", type=int, default=ITERS, help="training iterations (the recipe: 2000)")
  parser.add_argument("--peak_tflops", type=float, default=989.0, help="--bench: peak of the device (H100/H200 bf16)")
  args = parser.parse_args()
  BLOCK, BATCH, LAYERS, HEADS, WIDTH, ITERS = args.block, args.batch, args.layers, args.heads, args.width, args.iters
  torch.manual_seed(args.seed)
  if args.bench:
    bench(args)
    return
  rng = np.random.default_rng(args.seed)

  text = open(args.text, encoding="utf-8").read()
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  ids = np.fromiter((index[c] for c in text), np.int64, len(text))
  split = int(0.9 * len(ids))
  data = {"train": ids[:split], "val": ids[split:]}

  def batch(name):
    d = data[name]
    ix = rng.integers(0, len(d) - BLOCK, BATCH)
    x = torch.from_numpy(np.stack([d[i:i + BLOCK] for i in ix]))
    y = torch.from_numpy(np.stack([d[i + 1:i + 1 + BLOCK] for i in ix]))
    return x, y

  model = Gpt(len(chars))
  decay = [p for p in model.parameters() if p.dim() >= 2]
  other = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=LR, betas=(0.9, 0.99))
  step_fn = torch.compile(model) if args.compile else model

  @torch.no_grad()
  def estimate():
    model.eval()
    out = {name: float(np.mean([step_fn(*batch(name)).item() for _ in range(EVAL_ITERS)])) for name in data}
    model.train()
    return out

  x, y = batch("train")
  t0 = time.time()
  for it in range(ITERS + 1):
    for group in optimizer.param_groups:
      group["lr"] = learning_rate(it)
    if it % EVAL_EVERY == 0:
      losses = estimate()
      print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
    if it == ITERS:
      break
    loss = step_fn(x, y)
    x, y = batch("train")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t1 = time.time()
    print(f"iter {it}: loss {loss.item():.4f}, time {(t1 - t0) * 1000:.2f}ms", flush=True)
    t0 = t1

  model.eval()
  val = data["val"]
  total, count = 0.0, 0
  with torch.no_grad():
    for s in range(0, len(val) - 1, BLOCK):
      n = min(BLOCK, len(val) - 1 - s)
      loss = model(torch.from_numpy(val[s:s + n])[None], torch.from_numpy(val[s + 1:s + n + 1])[None])
      total, count = total + loss.item() * n, count + n
  print(f"full val loss {total / count:.4f}", flush=True)


if __name__ == "__main__":
  main()
