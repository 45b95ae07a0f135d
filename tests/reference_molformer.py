"""Test-only reference for the published MoLFormer forward pass (not part of the package).

Source: ``modeling_molformer.py`` of https://huggingface.co/ibm/MoLFormer-XL-both-10pct (revision
``7b12d946c181a37f6012b9dc3b002275de070314``, Apache-2.0, IBM / The HuggingFace team). The original file could not be
imported here (it needs ``transformers.onnx`` and the ``PreTrainedModel`` helpers of transformers 4.x), and only a
machine-transformed copy of it was available to read, so this is a re-implementation written for the tests that
follows the published *computation path* step by step, including the parts where the native
``molinfluence.molformer`` takes a different route to the same numbers:

- rotary tables are cached for ``max_position_embeddings`` positions at construction and indexed with
  ``position_ids``, instead of being computed for the actual length;
- the 2-D attention mask is first turned into the additive "extended" mask of transformers 4.x
  (``(1 - mask) * finfo.min``, shape B x 1 x 1 x T) and recovered inside attention with ``== 0``;
- every layer re-registers its ``feature_map.weight`` buffer when it redraws, in the same RNG order;
- pooling expands the mask to the hidden size before summing.

Omitted because MolInfluence never uses them (and the published defaults disable them): ``head_mask``,
``output_attentions``, ``inputs_embeds``, head pruning, feed-forward chunking and gradient checkpointing.
The module names reproduce the published parameter names, so a published (or native) state dict loads strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transformers.activations import ACT2FN


class RefRotary(nn.Module):
    """Rotary tables cached at construction (published ``MolformerRotaryEmbedding``)."""

    def __init__(self, dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        t = torch.arange(max_positions, dtype=inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached[:seq_len], self.sin_cached[:seq_len]


def ref_rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def ref_apply_rotary(q, k, cos, sin, position_ids):
    cos = cos[position_ids].unsqueeze(1)  # 1 x 1 x T x D
    sin = sin[position_ids].unsqueeze(1)
    return q * cos + ref_rotate_half(q) * sin, k * cos + ref_rotate_half(k) * sin


class RefFeatureMap(nn.Module):
    """Published ``MolformerFeatureMap``: block-orthogonal Gaussian projection, redrawn unless deterministic eval."""

    def __init__(self, head_size: int, num_features: int, kernel: str, deterministic: bool) -> None:
        super().__init__()
        self.head_size, self.num_features = head_size, num_features
        self.kernel = ACT2FN[kernel]
        self.deterministic = deterministic
        self._draw()

    def _draw(self) -> None:
        def block() -> torch.Tensor:
            g = torch.randn(self.head_size, self.head_size)
            row_norms = torch.linalg.norm(g, dim=1).unsqueeze(0)
            q, _ = torch.linalg.qr(g)
            return q * row_norms

        n_blocks = math.ceil(self.num_features / self.head_size)
        w = torch.cat([block() for _ in range(n_blocks)], dim=1)[:, : self.num_features]
        self.register_buffer("weight", w)

    def forward(self, query, key):
        if not self.deterministic or self.training:
            self._draw()
        return self.kernel(torch.matmul(query, self.weight)), self.kernel(torch.matmul(key, self.weight))


class RefSelfAttention(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.h = cfg.num_attention_heads
        self.d = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.eps = cfg.linear_attention_eps
        self.rotary_embeddings = RefRotary(self.d, cfg.max_position_embeddings)
        self.feature_map = RefFeatureMap(
            self.d, cfg.num_random_features, cfg.feature_map_kernel, cfg.deterministic_eval
        )

    def heads(self, x):
        return x.view(x.size()[:-1] + (self.h, self.d)).permute(0, 2, 1, 3)

    def forward(self, hidden, extended_mask, position_ids):
        q, k, v = self.heads(self.query(hidden)), self.heads(self.key(hidden)), self.heads(self.value(hidden))
        seq_len = k.shape[-2]
        cos, sin = self.rotary_embeddings(seq_len)
        q, k = ref_apply_rotary(q, k, cos, sin, position_ids)
        q, k = self.feature_map(q, k)
        keep = (extended_mask == 0).to(extended_mask.dtype)  # B x 1 x 1 x T, 1 = attend
        per_key = keep[:, 0, -1]  # B x T
        k = k * per_key[:, None, -seq_len:, None]
        kv = torch.matmul(k.transpose(-1, -2), v)
        norm = torch.matmul(q, k.sum(dim=-2).unsqueeze(-1)).clamp(min=self.eps)
        ctx = torch.matmul(q, kv) / norm
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size()[:-2] + (self.h * self.d,))


class RefAddNorm(nn.Module):
    def __init__(self, d_in: int, cfg) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class RefAttention(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.self = RefSelfAttention(cfg)
        self.output = RefAddNorm(cfg.hidden_size, cfg)


class RefIntermediate(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class RefLayer(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.attention = RefAttention(cfg)
        self.intermediate = RefIntermediate(cfg)
        self.output = RefAddNorm(cfg.intermediate_size, cfg)

    def forward(self, hidden, extended_mask, position_ids):
        attn = self.attention.output(self.attention.self(hidden, extended_mask, position_ids), hidden)
        return self.output(self.intermediate(attn), attn)


class RefEmbeddings(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.dropout = nn.Dropout(cfg.embedding_dropout_prob)


class RefEncoder(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.layer = nn.ModuleList([RefLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class ReferenceMolformerModel(nn.Module):
    """Published ``MolformerModel`` forward: returns ``(last_hidden_state, pooled_output)``."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.embeddings = RefEmbeddings(cfg)
        self.encoder = RefEncoder(cfg)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        batch, seq_len = input_ids.shape
        position_ids = torch.arange(seq_len, dtype=torch.long).unsqueeze(0).view(-1, seq_len)
        if attention_mask is None:
            attention_mask = torch.ones((batch, seq_len))
        dtype = self.LayerNorm.weight.dtype
        extended = attention_mask[:, None, None, :].to(dtype)
        extended = (1.0 - extended) * torch.finfo(dtype).min
        hidden = self.embeddings.dropout(self.embeddings.word_embeddings(input_ids))
        for layer in self.encoder.layer:
            hidden = layer(hidden, extended, position_ids)
        sequence_output = self.LayerNorm(hidden)
        mask = attention_mask.unsqueeze(-1).expand_as(sequence_output).float()
        pooled = torch.sum(sequence_output * mask, dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
        return sequence_output, pooled


class RefLMHeadTransform(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACT2FN[cfg.hidden_act]
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class RefLMHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.transform = RefLMHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


class ReferenceMolformerForMaskedLM(nn.Module):
    """Published ``MolformerForMaskedLM`` forward: returns the vocabulary logits."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.molformer = ReferenceMolformerModel(cfg)
        self.lm_head = RefLMHead(cfg)

    def forward(self, input_ids, attention_mask=None):
        hidden, _ = self.molformer(input_ids, attention_mask)
        t = self.lm_head.transform
        return self.lm_head.decoder(t.LayerNorm(t.act(t.dense(hidden))))
