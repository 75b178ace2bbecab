"""``charlm``: a small causal transformer over characters of the Python standard library's sources.

The corpus is the text of the standard library's own top-level ``.py`` files, read in sorted
order up to ``corpus_chars`` characters, so it exists on every machine with no download. The
first 90% trains (cut into non-overlapping windows that the workers shard), the rest is held out.
"""
from __future__ import annotations

import dataclasses
import math
import sysconfig
from functools import cache
from pathlib import Path

import torch
from torch import nn

from agentsync.optim import OptimizerConfig
from agentsync.options import check
from agentsync.tasks.base import ShardSampler, Task, TaskConfig

VOCAB = 128  # ASCII; any other character maps to 0


@cache
def stdlib_text(chars: int) -> torch.Tensor:
    """The first ``chars`` ASCII codes of the standard library's sorted top-level modules."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    codes = [c if c < VOCAB else 0 for c in "".join(parts)[:chars].encode("ascii", errors="replace")]
    return torch.tensor(codes, dtype=torch.long)


@dataclasses.dataclass(kw_only=True)
class CharLMConfig(TaskConfig):
    name: str = "charlm"
    context: int = 64
    """Characters the model sees at once."""
    d_model: int = 64
    """Transformer width."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 4
    """Attention heads per block."""
    corpus_chars: int = 400_000
    """Characters of standard-library source to read (90% train, 10% held out)."""
    eval_windows: int = 256
    """Held-out windows scored by evaluate."""

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.d_model % self.heads == 0, f"{section}.d_model", f"a multiple of heads ({self.heads})",
              self.d_model)
        check(self.context >= 2 and self.layers >= 1, f"{section}.context/layers", "context >= 2, layers >= 1",
              (self.context, self.layers))
        check(self.corpus_chars >= 20 * (self.context + 1), f"{section}.corpus_chars",
              f">= {20 * (self.context + 1)}", self.corpus_chars)


class TinyGPT(nn.Module):
    """Token + position embeddings, pre-norm causal transformer blocks, a linear head."""

    def __init__(self, c: CharLMConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, c.d_model)
        self.positions = nn.Embedding(c.context, c.d_model)
        block = nn.TransformerEncoderLayer(c.d_model, c.heads, 4 * c.d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.output(self.blocks(self.embed(idx), mask=causal_mask(idx.shape[1], idx.device), is_causal=True))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(t, device=device)


class Embed(nn.Module):
    """Pipeline unit: token and position embeddings (the model's own modules)."""

    def __init__(self, model: TinyGPT) -> None:
        super().__init__()
        self.tokens, self.positions = model.tokens, model.positions

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return TinyGPT.embed(self, idx)


class Block(nn.Module):
    """Pipeline unit: one transformer block, causal."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h, src_mask=causal_mask(h.shape[1], h.device), is_causal=True)


class Output(nn.Module):
    """Pipeline unit: the final norm and the head."""

    def __init__(self, model: TinyGPT) -> None:
        super().__init__()
        self.norm, self.head = model.norm, model.head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return TinyGPT.output(self, h)


class CharLM(Task):
    """Next-character prediction; metric: held-out cross-entropy (nats per character)."""

    Config = CharLMConfig
    description = "small causal transformer on standard-library source text (held-out loss)"
    default_steps = 600
    default_eval_every = 100
    default_optimizer = OptimizerConfig(name="adamw", lr=3e-3, weight_decay=0.01)
    metric = "loss"
    higher_is_better = False

    def __init__(self, config: CharLMConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        text = stdlib_text(config.corpus_chars).to(self.device)
        cut = int(0.9 * len(text))
        w = config.context + 1
        self.train_windows = text[: cut // w * w].view(-1, w)
        held_out = text[cut:]
        held_out = held_out[: len(held_out) // w * w].view(-1, w)
        self.eval_windows = held_out[: config.eval_windows]
        self.sampler = ShardSampler(len(self.train_windows), worker_rank=self.worker_rank,
                                    num_workers=self.num_workers, batch_size=config.batch_size, seed=self.seed)

    def build_model(self) -> nn.Module:
        return TinyGPT(self.config)

    @staticmethod
    def window_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
        logits = model(windows[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, int]:
        windows = self.train_windows[torch.from_numpy(self.sampler.indices(step)).to(self.device)]
        return self.window_loss(model, windows), len(windows)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        loss = self.window_loss(model, self.eval_windows).item()
        return {"loss": loss, "bits_per_char": loss / math.log(2)}

    @classmethod
    def pipeline_unit_count(cls, config: CharLMConfig) -> int:
        return config.layers + 2

    def pipeline_units(self, model: TinyGPT) -> list[nn.Module]:
        """The embeddings, each transformer block, the norm with the head."""
        return [Embed(model), *(Block(layer) for layer in model.blocks.layers), Output(model)]

    def pipeline_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.train_windows[torch.from_numpy(self.sampler.indices(step)).to(self.device)]
        return windows[:, :-1], windows[:, 1:]

    @staticmethod
    def pipeline_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.reshape(-1, VOCAB), target.reshape(-1))
