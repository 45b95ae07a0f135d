"""Native MoLFormer-XL encoder (``ibm/MoLFormer-XL-both-10pct``) for transformers 5.

The hub repository ships its modeling code as remote code that no longer imports on transformers 5 (it imports
``transformers.onnx``), and MolInfluence never runs remote code anyway. This module re-implements the published
architecture with the published parameter names, so the published checkpoint loads with
``trust_remote_code=False``:

- token embeddings (no position embeddings) with dropout;
- ``num_hidden_layers`` post-LayerNorm blocks whose self-attention is *linear* attention: rotary position embeddings
  on queries and keys, then a random-feature map ``phi(x) = relu(x W)`` with ``W`` a fixed (head_size x
  num_random_features) block-orthogonal Gaussian projection stored in the checkpoint, and
  ``out = phi(Q) (phi(K)^T V) / clamp(phi(Q) . sum_t phi(K_t), eps)`` with padded keys zeroed;
- a final LayerNorm (``last_hidden_state``) and an attention-masked mean (``pooler_output``).

The published code redraws ``W`` on every forward pass unless ``deterministic_eval`` is true and the model is in
eval mode. Influence functions need a fixed function of the parameters, so :func:`load_encoder` turns
``deterministic_eval`` on by default. The forward pass uses no in-place operations on differentiable tensors, no
``.item()`` and no control flow on tensor values, so it works under ``torch.func`` (``functional_call``, ``vmap``,
``jvp``, ``hessian``) in deterministic eval mode. (In train mode every forward pass draws new projections from the
global torch RNG, which ``vmap`` refuses unless given a ``randomness`` mode; the last draw stays in the buffers and
is saved with the model, so a fine-tuned model is evaluated with the projection it was last trained with.)
A caller may supply the next pass's draws instead (:meth:`MolformerModel.set_next_feature_projections`, same
distribution via :func:`draw_orthogonal_feature_stack`): the training loop draws all layers' projections for a step in
one batched QR from its own seeded CPU generator, off the accelerator's critical path.

Importing this module registers the classes with ``AutoConfig``, ``AutoModel`` and ``AutoModelForMaskedLM`` for
``model_type = "molformer"``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput
from transformers.utils import logging as transformers_logging

PUBLISHED_MODEL_ID = "ibm/MoLFormer-XL-both-10pct"
"""Hub id of the published MoLFormer-XL checkpoint (a ``MolformerForMaskedLM``)."""

ROTARY_BASE = 10000.0
"""Base of the rotary position embedding frequencies, as in the published code."""


class ModelLoadError(ValueError):
    """A MoLFormer checkpoint or tokenizer could not be loaded; the message says what to do about it."""


class MolformerConfig(PreTrainedConfig):
    """Configuration of a MoLFormer encoder; the defaults are those of the published ``config.json``.

    ``deterministic_eval`` decides whether the attention feature map keeps its stored projection in eval mode
    (``True``) or redraws it on every forward pass like the published default (``False``); it is read at every
    forward pass, so changing ``model.config.deterministic_eval`` takes effect immediately.
    """

    model_type = "molformer"

    vocab_size: int = 2362
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 768
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    embedding_dropout_prob: float | int = 0.2
    max_position_embeddings: int = 202
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    linear_attention_eps: float = 1e-6
    num_random_features: int = 32
    feature_map_kernel: str = "relu"
    deterministic_eval: bool = False
    classifier_dropout_prob: float | int | None = None
    classifier_skip_connection: bool = True
    pad_token_id: int | None = 2
    # The published language-model decoder is its own matrix (the published parameter count includes it).
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Reject shapes the architecture cannot run, with a ValueError naming the config key."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"MolformerConfig: hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        head_size = self.hidden_size // self.num_attention_heads
        if head_size % 2 != 0:
            raise ValueError(
                f"MolformerConfig: the attention head size hidden_size/num_attention_heads = {head_size} must be even "
                "for rotary position embeddings"
            )
        if self.num_random_features < 1:
            raise ValueError(f"MolformerConfig: num_random_features must be >= 1, got {self.num_random_features}")
        for key in ("hidden_act", "feature_map_kernel"):
            if getattr(self, key) not in ACT2FN:
                raise ValueError(f"MolformerConfig: unknown activation {key}={getattr(self, key)!r}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension: ``(x1, x2) -> (-x2, x1)`` (the published convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(
    seq_len: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables (``seq_len x dim``) of the rotary embedding at positions ``0..seq_len-1``.

    The angles are ``t * base^(-2i/dim)`` for ``i < dim/2``, repeated for both halves (``cat(freqs, freqs)``), and
    are computed in float32 like the published cache before casting to ``dtype``.
    """
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, dim, 2, device=device).float() / dim))
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``... x T x dim``) by the per-position angles whose cosines/sines are ``cos``/``sin`` (T x dim)."""
    return x * cos + rotate_half(x) * sin


def draw_orthogonal_features(
    head_size: int, num_features: int, *, device: torch.device | None = None
) -> torch.Tensor:
    """Draw the random-feature projection ``W`` (``head_size x num_features``) the way the published code does.

    Each block is ``Q * n`` where ``Q`` comes from the QR decomposition of a square standard-Gaussian matrix ``G`` and
    ``n`` holds the row norms of ``G`` (scaling column ``j`` of ``Q``); blocks are concatenated column-wise and
    truncated to ``num_features`` columns. Uses the global torch RNG, so ``torch.manual_seed`` makes it reproducible.
    """
    return draw_orthogonal_feature_stack(1, head_size, num_features, device=device)[0]


def draw_orthogonal_feature_stack(
    count: int,
    head_size: int,
    num_features: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``count`` independent draws of :func:`draw_orthogonal_features` (``count x head_size x num_features``), with
    all blocks orthogonalised by one batched QR.

    Without ``generator`` the Gaussians come from the global RNG one block at a time, in the published order (so
    ``count=1`` is exactly the published single draw); with a ``generator`` (a dedicated, seeded CPU generator, as the
    training loop uses to take the redraw off the accelerator's critical path) they come from it in one call.
    """
    blocks = math.ceil(num_features / head_size)
    if generator is None:
        gaussian = torch.stack([torch.randn(head_size, head_size, device=device) for _ in range(count * blocks)])
    else:
        gaussian = torch.randn(count * blocks, head_size, head_size, generator=generator, device=device)
    norms = torch.linalg.norm(gaussian, dim=2).unsqueeze(1)  # row norms of each G, scaling the columns of its Q
    q, _ = torch.linalg.qr(gaussian)
    scaled = (q * norms).view(count, blocks, head_size, head_size)
    return scaled.permute(0, 2, 1, 3).reshape(count, head_size, blocks * head_size)[..., :num_features]


class MolformerEmbeddings(nn.Module):
    """Token embeddings followed by dropout; positions enter only through the rotary attention."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``input_ids`` (B x T) into B x T x hidden."""
        return self.dropout(self.word_embeddings(input_ids))


class MolformerFeatureMap(nn.Module):
    """Random-feature map ``phi(x) = kernel(x W)`` of the linear attention.

    ``weight`` is a persistent buffer (it is part of the published checkpoint). In train mode, or whenever
    ``config.deterministic_eval`` is false, a fresh ``W`` is drawn before use and stored, as in the published code.
    """

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.config = config
        self.head_size = config.hidden_size // config.num_attention_heads
        self.num_features = config.num_random_features
        self.kernel = ACT2FN[config.feature_map_kernel]
        # Filled by the checkpoint or by MolformerPreTrainedModel._init_weights.
        self.register_buffer("weight", torch.empty(self.head_size, self.num_features))

    def redraw(self) -> None:
        """Replace ``weight`` by a fresh draw from the global torch RNG (not an in-place write)."""
        self.weight = draw_orthogonal_features(self.head_size, self.num_features, device=self.weight.device).to(
            self.weight.dtype
        )

    def use_next(self, weight: torch.Tensor) -> None:
        """Make ``weight`` (drawn elsewhere with the same distribution) the next forward pass's fresh draw, instead of
        a draw from the global RNG; it is used once, and stored like a draw made here."""
        self._next_weight = weight

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map queries and keys (``... x head_size``) to non-negative features (``... x num_random_features``)."""
        pending = self.__dict__.pop("_next_weight", None)  # used by this pass or dropped, never by a later one
        if self.training or not self.config.deterministic_eval:
            if pending is None:
                self.redraw()
            else:
                self.weight = pending.to(self.weight.dtype)
        return self.kernel(query @ self.weight), self.kernel(key @ self.weight)


class MolformerSelfAttention(nn.Module):
    """Multi-head linear attention with rotary positions and a random-feature kernel."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.feature_map = MolformerFeatureMap(config)
        self.eps = config.linear_attention_eps

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_size).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, key_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Attend over ``hidden_states`` (B x T x hidden); ``key_mask`` (B x T, 1 = real token) zeroes padded keys."""
        query = apply_rotary(self._split_heads(self.query(hidden_states)), cos, sin)
        key = apply_rotary(self._split_heads(self.key(hidden_states)), cos, sin)
        value = self._split_heads(self.value(hidden_states))
        query, key = self.feature_map(query, key)
        key = key * key_mask[:, None, :, None]
        key_value = key.transpose(-1, -2) @ value
        normaliser = (query @ key.sum(dim=-2).unsqueeze(-1)).clamp(min=self.eps)
        context = (query @ key_value) / normaliser
        batch, _, seq_len, _ = context.shape
        return context.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_size)


class MolformerSelfOutput(nn.Module):
    """Attention output projection, dropout, residual connection and LayerNorm."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Project ``hidden_states`` and add-and-normalise with ``residual``."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class MolformerAttention(nn.Module):
    """Self-attention plus its output block (``attention.self`` / ``attention.output`` in the checkpoint)."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.self = MolformerSelfAttention(config)
        self.output = MolformerSelfOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, key_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Self-attention sub-layer of a block."""
        return self.output(self.self(hidden_states, key_mask, cos, sin), hidden_states)


class MolformerIntermediate(nn.Module):
    """First feed-forward projection with its activation."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``act(dense(x))``."""
        return self.act(self.dense(hidden_states))


class MolformerOutput(nn.Module):
    """Second feed-forward projection, dropout, residual connection and LayerNorm."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Project ``hidden_states`` back to the model width and add-and-normalise with ``residual``."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class MolformerLayer(nn.Module):
    """One post-LayerNorm transformer block with linear attention."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.attention = MolformerAttention(config)
        self.intermediate = MolformerIntermediate(config)
        self.output = MolformerOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, key_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Attention sub-layer then feed-forward sub-layer."""
        attended = self.attention(hidden_states, key_mask, cos, sin)
        return self.output(self.intermediate(attended), attended)


class MolformerEncoder(nn.Module):
    """The stack of ``num_hidden_layers`` blocks (``encoder.layer.{i}`` in the checkpoint)."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MolformerLayer(config) for _ in range(config.num_hidden_layers))


class MolformerPreTrainedModel(PreTrainedModel):
    """Shared weight initialisation and loading metadata of the MoLFormer models."""

    config_class = MolformerConfig
    config: MolformerConfig
    base_model_prefix = "molformer"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise as the published code does (normal(0, initializer_range) linears/embeddings, unit LayerNorms,
        zeroed padding embedding) and draw a fresh random-feature projection where none was loaded."""
        super()._init_weights(module)
        if isinstance(module, MolformerFeatureMap) and not getattr(module.weight, "_is_hf_initialized", False):
            init.copy_(
                module.weight,
                draw_orthogonal_features(module.head_size, module.num_features, device=module.weight.device),
            )


class MolformerModel(MolformerPreTrainedModel):
    """The MoLFormer encoder: ``last_hidden_state`` (final LayerNorm) and ``pooler_output`` (masked mean)."""

    def __init__(self, config: MolformerConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = MolformerEmbeddings(config)
        self.encoder = MolformerEncoder(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.add_pooling_layer = add_pooling_layer
        self.post_init()

    def feature_maps(self) -> list[MolformerFeatureMap]:
        """The attention feature maps, one per layer (in layer order)."""
        return [layer.attention.self.feature_map for layer in self.encoder.layer]

    def set_next_feature_projections(self, projections: torch.Tensor) -> None:
        """Give every layer its projection for the next forward pass (``num_hidden_layers x head_size x
        num_random_features``, e.g. from :func:`draw_orthogonal_feature_stack`); in train mode they replace that pass's
        draws from the global RNG."""
        maps = self.feature_maps()
        expected = (len(maps), maps[0].head_size, maps[0].num_features)
        if tuple(projections.shape) != expected:
            raise ValueError(f"feature projections have shape {tuple(projections.shape)}, expected {expected}")
        for feature_map, weight in zip(maps, projections.unbind(0)):
            feature_map.use_next(weight)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding matrix."""
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding matrix."""
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Encode right- or left-padded token ids.

        Args:
            input_ids: LongTensor B x T.
            attention_mask: B x T, 1 for real tokens and 0 for padding (all ones when omitted). Padded keys are
                zeroed in every attention layer and excluded from the pooled mean.
            output_hidden_states: also return the input of every block plus the last block's output (before the
                final LayerNorm), as the published code does.

        Returns:
            ``BaseModelOutputWithPooling`` with ``last_hidden_state`` (B x T x hidden), ``pooler_output``
            (B x hidden, or ``None`` when built with ``add_pooling_layer=False``) and ``hidden_states``.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch x tokens), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        hidden_states = self.embeddings(input_ids)
        key_mask = attention_mask.to(hidden_states.dtype)
        cos, sin = rotary_cos_sin(
            input_ids.shape[1],
            self.config.hidden_size // self.config.num_attention_heads,
            device=hidden_states.device,
            dtype=hidden_states.dtype,
        )
        all_hidden_states = []
        for layer in self.encoder.layer:
            all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, key_mask, cos, sin)
        all_hidden_states.append(hidden_states)
        sequence_output = self.LayerNorm(hidden_states)
        pooled_output = masked_mean(sequence_output, key_mask) if self.add_pooling_layer else None
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Mean of ``hidden_states`` (B x T x H) over the positions where ``mask`` (B x T) is 1."""
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=eps)


class MolformerPredictionHeadTransform(nn.Module):
    """Dense + activation + LayerNorm ahead of the vocabulary projection."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(act(dense(x)))``."""
        return self.LayerNorm(self.act(self.dense(hidden_states)))


class MolformerLMPredictionHead(nn.Module):
    """Masked-language-model head: transform then a bias-free projection onto the vocabulary."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__()
        self.transform = MolformerPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B x T x vocab)."""
        return self.decoder(self.transform(hidden_states))


class MolformerForMaskedLM(MolformerPreTrainedModel):
    """MoLFormer with its masked-language-model head: the class of the published checkpoint."""

    def __init__(self, config: MolformerConfig) -> None:
        super().__init__(config)
        self.molformer = MolformerModel(config, add_pooling_layer=False)
        self.lm_head = MolformerLMPredictionHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        """The vocabulary projection."""
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Replace the vocabulary projection."""
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> MaskedLMOutput:
        """Vocabulary logits for every position; with ``labels`` (B x T, -100 = ignore) also the mean
        cross-entropy ``loss``."""
        outputs = self.molformer(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, self.config.vocab_size), labels.reshape(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


AutoConfig.register(MolformerConfig.model_type, MolformerConfig, exist_ok=True)
AutoModel.register(MolformerConfig, MolformerModel, exist_ok=True)
AutoModelForMaskedLM.register(MolformerConfig, MolformerForMaskedLM, exist_ok=True)


def _download_hint(name: str) -> str:
    return (
        f"download the model with `hf download {name} --local-dir DIR` (on a machine with internet access) "
        "and set model.name to DIR"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_encoder(
    name_or_path: str,
    *,
    deterministic_eval: bool = True,
    local_files_only: bool = False,
    revision: str | None = None,
) -> MolformerModel:
    """Load the MoLFormer encoder from a local directory or hub id, in eval mode, never running remote code.

    Works with a ``MolformerModel`` checkpoint as well as with a checkpoint with a head (such as the published
    ``MolformerForMaskedLM``, whose encoder weights carry the ``molformer.`` prefix); head weights are ignored.
    With ``deterministic_eval=True`` (the default) the stored random-feature projections are used in eval mode,
    so two eval passes are bit-identical and the encoder is a fixed function of its parameters.

    Raises:
        ModelLoadError: the directory or hub id cannot be read, the checkpoint is not a MoLFormer checkpoint, or
            its weights are missing or do not match the shapes of its config.
    """
    path = Path(name_or_path).expanduser()
    is_local = path.exists()
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
    if not is_local and looks_like_path:
        raise ModelLoadError(
            f"MoLFormer model directory {name_or_path!r} does not exist; {_download_hint(PUBLISHED_MODEL_ID)}"
        )
    if is_local and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{name_or_path!r} has no config.json, so it is not a saved model directory; "
            f"{_download_hint(PUBLISHED_MODEL_ID)}"
        )
    source = str(path) if is_local else name_or_path
    hub_kwargs = {"local_files_only": local_files_only, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **hub_kwargs)
    except (OSError, ValueError) as exc:
        if is_local:
            raise ModelLoadError(f"cannot read the model config in {source!r}: {_first_line(exc)}") from exc
        raise ModelLoadError(
            f"cannot fetch MoLFormer {source!r} from the Hugging Face hub and no local directory of that name exists "
            f"({_first_line(exc)}); {_download_hint(source)}"
        ) from exc
    if not isinstance(config, MolformerConfig):
        raise ModelLoadError(
            f"{source!r} holds a {getattr(config, 'model_type', type(config).__name__)!r} model, not a MoLFormer "
            f"(model_type 'molformer'); point model.name at a MoLFormer checkpoint such as {PUBLISHED_MODEL_ID}"
        )
    config.deterministic_eval = deterministic_eval
    # Loading issues are checked below and reported as one ModelLoadError; the library's own report (which also
    # lists the expected, ignored head weights) would only be noise.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = MolformerModel.from_pretrained(
            source,
            config=config,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            trust_remote_code=False,
            **hub_kwargs,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load the MoLFormer weights of {source!r}: {_first_line(exc)}; "
            "the directory must hold model.safetensors (or pytorch_model.bin) saved with its config.json"
        ) from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
    mismatched = sorted(info["mismatched_keys"])
    if mismatched:
        key, checkpoint_shape, model_shape = mismatched[0]
        raise ModelLoadError(
            f"the MoLFormer checkpoint in {source!r} does not match its config.json: {len(mismatched)} weights have "
            f"other shapes, e.g. {key} is {tuple(checkpoint_shape)} in the checkpoint but the config implies "
            f"{tuple(model_shape)}; use the config.json saved with these weights"
        )
    missing = sorted(info["missing_keys"])
    if missing:
        raise ModelLoadError(
            f"the checkpoint in {source!r} lacks {len(missing)} MoLFormer encoder weights (e.g. {missing[0]}); "
            "it is not a complete MoLFormer checkpoint"
        )
    return model.eval()
