"""nanoGPT's CPU recipe for Tiny Shakespeare, re-implemented: the other side of the GPT race in the benchmark.

    python -m experiments.benchmarks.nanogpt --data input.txt [--out_dir DIR] [--max_iters 2000]

stands for nanoGPT's ``python data/shakespeare_char/prepare.py`` then ``python train.py
config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`` (0.8M parameters),
which cannot be fetched here. Like nanoGPT it imports only PyTorch and NumPy, and follows its ``model.py`` (GPT-2
layout without biases, exact GELU, tied embeddings, GPT-2 initialization) and ``train.py`` (a ``uint16`` memmap
re-opened per batch, weight decay on every tensor of two or more dimensions, non-fused AdamW on the CPU, warmup and
cosine decay, gradient clipping at 1.0, a 20-batch loss estimate of each split every 250 steps, checkpoint saves
when the estimate improves) line by line. It prints nanoGPT's log lines, plus ``EVAL step val_loss time`` for the
race and, after training (untimed by nanoGPT's own clock), ``EXACT loss``: the loss over every non-overlapping
block of the validation split, as zerotune reports it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(), nn.Linear(4 * n_embd, n_embd, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's ``GPT`` (``model.py``) with ``bias=False`` and ``dropout=0``."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab_size, n_embd),
                "wpe": nn.Embedding(block_size, n_embd),
                "h": nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer)),
                "ln_f": nn.LayerNorm(n_embd, bias=False),
            }
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def train(data: str, out_dir: str, max_iters: int = 2000) -> None:
    """Prepare the data and train as nanoGPT's CPU recipe does, printing its log lines."""
    # data/shakespeare_char/prepare.py: the characters of the whole text; the first 90% train, the rest validate.
    text = Path(data).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    os.makedirs(out_dir, exist_ok=True)
    for split, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9) :])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(os.path.join(out_dir, f"{split}.bin"))

    # train.py's defaults, config/train_shakespeare_char.py, then the command line's overrides.
    eval_interval, eval_iters, log_interval = 250, 20, 10
    batch_size, block_size = 12, 64
    learning_rate, min_lr, lr_decay_iters, warmup_iters = 1e-3, 1e-4, max_iters, 100
    weight_decay, beta1, beta2, grad_clip = 1e-1, 0.9, 0.99, 1.0
    torch.manual_seed(1337)

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        mem = np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r")  # re-opened: no leak
        ix = torch.randint(len(mem) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(mem[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(mem[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    model = NanoGPT(len(chars), block_size, n_layer=4, n_head=4, n_embd=128)
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    print(f"number of parameters: {n_params / 1e6:.2f}M", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2))  # fused only on CUDA

    def get_lr(it: int) -> float:
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                losses[k] = model(*get_batch(split)).item()
            out[split] = losses.mean().item()
        model.train()
        return out

    x, y = get_batch("train")
    t0 = time.time()
    best_val_loss, iter_num = 1e9, 0
    while True:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num)
        if iter_num % eval_interval == 0:
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            print(f"EVAL {iter_num} {losses['val']:.4f} {time.time()}", flush=True)
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": iter_num}
                    torch.save(state, os.path.join(out_dir, "ckpt.pt"))
        loss = model(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % log_interval == 0:
            print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms", flush=True)
        iter_num += 1
        if iter_num > max_iters:
            break
    print(f"EXACT {exact_val_loss(model, os.path.join(out_dir, 'val.bin'), block_size):.4f}", flush=True)


@torch.no_grad()
def exact_val_loss(model: NanoGPT, path: str, block_size: int) -> float:
    """Mean loss over every non-overlapping block of a token file (zerotune's validation loss)."""
    tokens = torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))
    count = (len(tokens) - 1) // block_size
    starts = torch.arange(count) * block_size
    model.eval()
    total = 0.0
    for i in range(0, count, 256):
        idx = starts[i : i + 256, None] + torch.arange(block_size + 1)
        blocks = tokens[idx]
        total += float(model(blocks[:, :-1], blocks[:, 1:].contiguous())) * blocks[:, 1:].numel()
    return total / (count * block_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmarks.nanogpt", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", required=True, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--out_dir", default="out-shakespeare-char", help="token files and ckpt.pt")
    parser.add_argument("--max_iters", type=int, default=2000)
    args = parser.parse_args(argv)
    train(args.data, args.out_dir, args.max_iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
