"""A tiny decoder-only transformer (GPT) in plain PyTorch, for the demo trainer only.

Owns the model: token + learned position embeddings, ``depth`` pre-norm blocks
(causal self-attention through ``scaled_dot_product_attention`` and a GELU MLP),
a final norm and an untied output head. Also the optimizer setup (AdamW; the token
embedding gets its own, larger learning rate and no weight decay) and sampling. Nothing in here knows
about nanostream: the trainer feeds it ``(B, T)`` int64 token tensors. ``bits_per_byte``
is the tokenizer-independent validation figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int = 256
    depth: int = 4
    d_model: int = 128
    head_dim: int = 32
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.d_model % self.head_dim:
            raise ValueError(f"d_model={self.d_model} must be a multiple of head_dim={self.head_dim}")
        if min(self.vocab_size, self.seq_len, self.depth, self.d_model) < 1:
            raise ValueError(f"every GPTConfig size must be >= 1: {self}")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.d_model, bias=False)
        # untied: at this size a tied head learns the bigram statistics measurably slower
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        # residual projections start small so the residual stream's variance stays ~1 with depth
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters, leaving out position embeddings."""
        return sum(p.numel() for p in self.parameters()) - self.pos_emb.weight.numel()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Logits ``(B, T, V)``, or with ``targets`` the cross-entropy (nats) with ``reduction``."""
        _, t = idx.shape
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len={self.cfg.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)
        return loss if reduction != "none" else loss.view(targets.shape)

    def optimizer(self, lr: float, emb_lr: float, weight_decay: float = 0.1,
                  device_type: str = "cpu") -> torch.optim.AdamW:
        """AdamW with three groups: the token embedding (``emb_lr``, no decay), matrices (``lr``,
        decayed), vectors such as norm weights (``lr``, no decay). Each group keeps its peak rate in
        ``base_lr`` for the trainer's schedule. Fused kernels on CUDA.

        The embedding's rows are each touched only by the tokens present in a batch, so they see
        few, sparse updates; a larger rate for them (nanochat does the same) makes the first few
        hundred steps of a tiny run learn much faster.
        """
        emb = self.tok_emb.weight
        rest = [p for p in self.parameters() if p is not emb]
        groups = [
            {"params": [emb], "lr": emb_lr, "base_lr": emb_lr, "weight_decay": 0.0},
            {"params": [p for p in rest if p.dim() >= 2], "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "lr": lr, "base_lr": lr, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device_type == "cuda")

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.8,
                 top_k: int | None = 40, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` ``(B, T)`` (no KV cache: the model is tiny)."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.seq_len:])[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


@torch.no_grad()
def bits_per_byte(model: GPT, batches: Iterator, n: int, tb: torch.Tensor,
                  autocast: Callable[[], AbstractContextManager]) -> tuple[float, int]:
    """Bits per byte over up to ``n`` ``(x, y)`` batches: summed NLL (nats) / (ln 2 * bytes of the targets).

    ``tb[i]`` is the number of UTF-8 bytes token ``i`` stands for; tokens worth 0 bytes (BOS and
    other specials) are left out of both sums, so the figure is comparable across tokenizers.
    Returns (bits per byte, batches used).
    """
    model.eval()
    nats, nbytes, seen = 0.0, 0, 0
    for x, y in batches:
        with autocast():
            loss = model(x, y, reduction="none")
        b = tb[y]
        nats += float((loss * (b > 0)).sum())
        nbytes += int(b.sum())
        seen += 1
        if seen == n:
            break
    model.train()
    return (nats / (math.log(2) * nbytes) if nbytes else float("nan")), seen
