"""Tests for molinfluence.molformer: the native MoLFormer loads the published layout, matches a test-only
re-implementation of the published forward (tests/reference_molformer.py: the hub's code does not import on
transformers 5, so it is not run here; the reference follows its computation path step by step), is
deterministic where influence functions need it, and works under torch.func."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call, grad, hessian, jvp, vmap
from transformers import AutoModel, AutoModelForMaskedLM

from molinfluence.molformer import (
    ModelLoadError,
    MolformerConfig,
    MolformerForMaskedLM,
    MolformerModel,
    apply_rotary,
    draw_orthogonal_feature_stack,
    draw_orthogonal_features,
    load_encoder,
    rotary_cos_sin,
)
from reference_molformer import ReferenceMolformerForMaskedLM, ReferenceMolformerModel

PAD = 2


def tiny_config(**overrides) -> MolformerConfig:
    """The small test configuration: hidden 32, 2 layers, 4 heads (head size 8), 16 random features (2 blocks)."""
    values = dict(
        vocab_size=24,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_random_features=16,
    )
    values.update(overrides)
    return MolformerConfig(**values)


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its initial value. Fresh models have zero biases and a zero padding embedding, which
    keep padded positions exactly zero in every layer and would hide a missing attention mask."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def tiny_encoder(seed: int = 0, **overrides) -> MolformerModel:
    torch.manual_seed(seed)
    return perturb(MolformerModel(tiny_config(deterministic_eval=True, **overrides))).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded molecules of lengths 7, 4 and 9 (<bos>=0 ... <eos>=1, <pad>=2)."""
    rows = [[0, 5, 6, 7, 8, 9, 1], [0, 10, 11, 1], [0, 12, 13, 5, 5, 14, 15, 16, 1]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    return ids, (ids != PAD).long()


# --- layout and configuration --------------------------------------------------------------------------------------


def test_config_defaults_are_the_published_ones() -> None:
    cfg = MolformerConfig()
    expected = dict(
        vocab_size=2362,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=768,
        num_random_features=32,
        feature_map_kernel="relu",
        max_position_embeddings=202,
        pad_token_id=2,
        layer_norm_eps=1e-12,
        embedding_dropout_prob=0.2,
        hidden_dropout_prob=0.1,
        hidden_act="gelu",
        linear_attention_eps=1e-6,
        deterministic_eval=False,
        initializer_range=0.02,
        classifier_dropout_prob=None,
        classifier_skip_connection=True,
    )
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.model_type == "molformer"


def test_config_rejects_heads_that_do_not_divide_hidden_size() -> None:
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        MolformerConfig(hidden_size=30, num_attention_heads=4)


def test_full_size_layout_matches_published_checkpoint() -> None:
    with torch.device("meta"):
        model = MolformerForMaskedLM(MolformerConfig())
    h, v = 768, 2362
    expected = {"molformer.embeddings.word_embeddings.weight": (v, h)}
    for i in range(12):
        p = f"molformer.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"):
            expected[p + name + ".weight"] = (h, h)
            expected[p + name + ".bias"] = (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            expected[p + name + ".weight"] = (h,)
            expected[p + name + ".bias"] = (h,)
        expected[p + "attention.self.feature_map.weight"] = (64, 32)
    expected.update({
        "molformer.LayerNorm.weight": (h,),
        "molformer.LayerNorm.bias": (h,),
        "lm_head.transform.dense.weight": (h, h),
        "lm_head.transform.dense.bias": (h,),
        "lm_head.transform.LayerNorm.weight": (h,),
        "lm_head.transform.LayerNorm.bias": (h,),
        "lm_head.decoder.weight": (v, h),
    })
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 46_781_184
    # The projection is a persistent buffer (stored in the checkpoint), not a trainable parameter.
    assert not any("feature_map" in name for name, _ in model.named_parameters())
    assert model.molformer.embeddings.word_embeddings.padding_idx == 2


# --- agreement with the re-implemented published forward (tests/reference_molformer.py) -------------------------


def test_encoder_matches_reference_reimplementation_on_padded_batch() -> None:
    """Eval mode, a padded batch: hidden states and pooled output equal those of tests/reference_molformer.py (an
    in-house re-implementation of the published modeling_molformer.py's computation path, not the hub's code)."""
    native = tiny_encoder(seed=1)
    reference = ReferenceMolformerModel(native.config).eval()
    reference.load_state_dict(native.state_dict(), strict=True)
    ids, mask = padded_batch()
    with torch.no_grad():
        out = native(ids, mask)
        ref_hidden, ref_pooled = reference(ids, mask)
    torch.testing.assert_close(out.last_hidden_state, ref_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref_pooled, atol=1e-5, rtol=0)


def test_masked_lm_matches_reference_reimplementation_and_loads_strictly() -> None:
    """The masked-LM head's logits equal the in-house reference's (tests/reference_molformer.py), and each model loads
    the other's state dict strictly (same parameter names as the published checkpoint)."""
    torch.manual_seed(2)
    native = perturb(MolformerForMaskedLM(tiny_config(deterministic_eval=True))).eval()
    reference = ReferenceMolformerForMaskedLM(native.config).eval()
    reference.load_state_dict(native.state_dict(), strict=True)
    ids, mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(native(ids, mask).logits, reference(ids, mask), atol=1e-5, rtol=0)


def test_train_mode_redraw_and_dropout_follow_the_reference_rng_order() -> None:
    """Same seed, same state: the native forward and the in-house reference of the published one
    (tests/reference_molformer.py) draw projections and dropout masks identically,
    and both keep the last drawn projection."""
    native = tiny_encoder(seed=3).train()
    reference = ReferenceMolformerModel(native.config).train()
    reference.load_state_dict(native.state_dict(), strict=True)
    ids, mask = padded_batch()
    torch.manual_seed(11)
    out = native(ids, mask)
    torch.manual_seed(11)
    ref_hidden, _ = reference(ids, mask)
    torch.testing.assert_close(out.last_hidden_state, ref_hidden, atol=1e-5, rtol=0)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(native.state_dict()[name], tensor), name


# --- independent re-derivations of the pieces -----------------------------------------------------------------------


def test_rotary_equals_complex_rotation() -> None:
    """Pairing dimension j with j + D/2 as a complex number, rotary multiplies it by exp(i * t * base^(-2j/D))."""
    seq_len, dim = 7, 8
    x = torch.randn(2, 3, seq_len, dim, dtype=torch.float64)
    cos, sin = rotary_cos_sin(seq_len, dim, dtype=torch.float64)
    rotated = apply_rotary(x, cos, sin)
    z = torch.complex(x[..., : dim // 2], x[..., dim // 2:])
    theta = torch.arange(seq_len, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, dim, 2) / dim)
    expected = z * torch.polar(torch.ones_like(theta), theta)
    torch.testing.assert_close(rotated, torch.cat((expected.real, expected.imag), dim=-1), atol=1e-6, rtol=0)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    dim = 8
    q, k = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    cos, sin = rotary_cos_sin(12, dim, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        return apply_rotary(q, cos[m], sin[m]) @ apply_rotary(k, cos[n], sin[n])

    torch.testing.assert_close(score(2, 5), score(6, 9))
    torch.testing.assert_close(score(0, 3), score(8, 11))


@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["typical", "tiny-normaliser"])
def test_linear_attention_equals_explicit_quadratic_kernel(scale: float) -> None:
    """out_t = sum_s A_ts v_s / max(sum_s A_ts, eps) with A_ts = phi(q_t).phi(k_s) over real keys s only.

    The tiny scale uses unperturbed (zero-bias) weights so that some normalisers fall below eps = 1e-6."""
    torch.manual_seed(4)
    model = MolformerModel(tiny_config(deterministic_eval=True)).eval().double()
    if scale == 1.0:
        perturb(model)
    attention = model.encoder.layer[0].attention.self
    ids, mask = padded_batch()
    hidden = scale * torch.randn(ids.shape[0], ids.shape[1], 32, dtype=torch.float64)
    cos, sin = rotary_cos_sin(ids.shape[1], 8, dtype=torch.float64)
    with torch.no_grad():
        out = attention(hidden, mask.double(), cos, sin)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(ids.shape[0], ids.shape[1], 4, 8).transpose(1, 2)

        w = attention.feature_map.weight
        phi_q = torch.relu(apply_rotary(heads(attention.query(hidden)), cos, sin) @ w)
        phi_k = torch.relu(apply_rotary(heads(attention.key(hidden)), cos, sin) @ w)
        v = heads(attention.value(hidden))
        expected = torch.zeros_like(v)
        normalisers = []
        for b in range(ids.shape[0]):
            for h in range(4):
                for t in range(ids.shape[1]):
                    weights = torch.stack([phi_q[b, h, t] @ phi_k[b, h, s] * mask[b, s] for s in range(ids.shape[1])])
                    normalisers.append(float(weights.sum()))
                    expected[b, h, t] = (weights[:, None] * v[b, h]).sum(0) / weights.sum().clamp(min=1e-6)
    if scale < 1:
        assert any(0 < n < 1e-6 for n in normalisers)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(out.shape), atol=1e-10, rtol=1e-8)


def test_feature_projection_is_block_orthogonal_with_gaussian_row_norms() -> None:
    head_size, num_features = 8, 20  # 3 blocks, the last truncated to 4 columns
    torch.manual_seed(5)
    w = draw_orthogonal_features(head_size, num_features)
    torch.manual_seed(5)
    gaussians = [torch.randn(head_size, head_size) for _ in range(3)]
    assert w.shape == (head_size, num_features)
    for b, g in enumerate(gaussians):
        block = w[:, b * head_size:(b + 1) * head_size]
        norms = torch.linalg.norm(g, dim=1)[: block.shape[1]]
        torch.testing.assert_close(block.norm(dim=0), norms, atol=1e-5, rtol=0)
        unit = block / norms
        torch.testing.assert_close(unit.T @ unit, torch.eye(block.shape[1]), atol=1e-5, rtol=0)


def test_batched_stack_draw_has_the_published_distribution_and_is_seeded_by_its_generator() -> None:
    """Each slice of a stack drawn from a dedicated generator is a published draw of that generator's Gaussians:
    block-orthogonal columns whose norms are the Gaussians' row norms; the same seed gives the same stack, and the
    global RNG is not touched."""
    count, head_size, num_features = 3, 8, 20  # 3 blocks per layer, the last truncated
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    stack = draw_orthogonal_feature_stack(count, head_size, num_features, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), global_state)
    again = draw_orthogonal_feature_stack(count, head_size, num_features, generator=torch.Generator().manual_seed(9))
    other = draw_orthogonal_feature_stack(count, head_size, num_features, generator=torch.Generator().manual_seed(10))
    assert torch.equal(stack, again) and not torch.allclose(stack, other)
    gaussians = torch.randn(count * 3, head_size, head_size, generator=torch.Generator().manual_seed(9))
    assert stack.shape == (count, head_size, num_features)
    for layer in range(count):
        for b in range(3):
            block = stack[layer, :, b * head_size:(b + 1) * head_size]
            norms = torch.linalg.norm(gaussians[layer * 3 + b], dim=1)[: block.shape[1]]
            torch.testing.assert_close(block.norm(dim=0), norms, atol=1e-5, rtol=0)
            unit = block / norms
            torch.testing.assert_close(unit.T @ unit, torch.eye(block.shape[1]), atol=1e-5, rtol=0)
    # The single published draw (global RNG) is the first slice of a one-layer stack, block for block.
    torch.manual_seed(5)
    single = draw_orthogonal_features(head_size, num_features)
    torch.manual_seed(5)
    assert torch.equal(single, draw_orthogonal_feature_stack(1, head_size, num_features)[0])


def test_supplied_projections_replace_one_train_mode_draw() -> None:
    """In train mode a supplied stack is what the next forward uses (and stores) instead of drawing from the global
    RNG; it is used once; eval mode with deterministic_eval drops it and keeps the stored projection."""
    model = tiny_encoder(seed=18)
    ids, mask = padded_batch()
    stack = draw_orthogonal_feature_stack(2, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stored = [m.weight.clone() for m in model.feature_maps()]
        model.set_next_feature_projections(stack)
        eval_out = model(ids, mask).last_hidden_state
        assert all(torch.equal(m.weight, w) for m, w in zip(model.feature_maps(), stored))
        model.train()
        torch.manual_seed(3)
        rng = torch.get_rng_state()
        model.config.embedding_dropout_prob = model.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.set_next_feature_projections(stack)
        supplied = model(ids, mask).last_hidden_state
        assert torch.equal(torch.get_rng_state(), rng)  # no global draw
        for layer, m in enumerate(model.feature_maps()):
            assert torch.equal(m.weight, stack[layer])
        model.eval()
        assert torch.equal(model(ids, mask).last_hidden_state, supplied)  # the stored draw is the used one
        assert not torch.allclose(supplied, eval_out, atol=1e-4)
        model.train()
        fresh = model(ids, mask).last_hidden_state  # nothing supplied: a global-RNG draw as published
        assert not torch.equal(torch.get_rng_state(), rng) and not torch.allclose(fresh, supplied, atol=1e-4)
    with pytest.raises(ValueError, match="expected"):
        model.set_next_feature_projections(stack[:1])


# --- determinism, padding, gradients --------------------------------------------------------------------------------


def test_deterministic_eval_is_bit_identical_and_published_default_is_not() -> None:
    model = tiny_encoder(seed=6)
    ids, mask = padded_batch()
    with torch.no_grad():
        first, second = model(ids, mask), model(ids, mask)
        assert torch.equal(first.last_hidden_state, second.last_hidden_state)
        assert torch.equal(first.pooler_output, second.pooler_output)
        model.config.deterministic_eval = False  # the published default: redraw even in eval mode
        assert not torch.allclose(model(ids, mask).pooler_output, first.pooler_output, atol=1e-3)


def test_train_mode_redraws_projection_and_is_seedable() -> None:
    model = tiny_encoder(seed=7).train()
    ids, mask = padded_batch()
    stored = model.encoder.layer[0].attention.self.feature_map.weight.clone()
    torch.manual_seed(0)
    first = model(ids, mask).pooler_output
    assert not torch.equal(model.encoder.layer[0].attention.self.feature_map.weight, stored)
    second = model(ids, mask).pooler_output
    assert not torch.allclose(first, second, atol=1e-3)
    torch.manual_seed(0)
    assert torch.equal(model(ids, mask).pooler_output, first)


def test_padding_does_not_change_a_molecules_vectors() -> None:
    model = tiny_encoder(seed=8)
    ids, mask = padded_batch()
    with torch.no_grad():
        batch = model(ids, mask)
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            alone = model(ids[i:i + 1, :n])
            torch.testing.assert_close(batch.last_hidden_state[i, 0], alone.last_hidden_state[0, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch.pooler_output[i], alone.pooler_output[0], atol=1e-5, rtol=0)


def test_gradient_reaches_every_parameter_in_train_mode() -> None:
    model = tiny_encoder(seed=9).train()
    ids, mask = padded_batch()
    out = model(ids, mask)
    loss = out.pooler_output.pow(2).sum() + out.last_hidden_state[:, 0].sin().sum()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # The padding embedding row is frozen (padding_idx), like in the published model.
    assert model.embeddings.word_embeddings.weight.grad[PAD].abs().sum() == 0


def test_output_hidden_states_lists_every_block_input_and_the_last_output() -> None:
    model = tiny_encoder(seed=10)
    ids, mask = padded_batch()
    with torch.no_grad():
        out = model(ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(model.LayerNorm(out.hidden_states[-1]), out.last_hidden_state)


def test_forward_rejects_mismatched_shapes() -> None:
    model = tiny_encoder(seed=17)
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        model(ids[0])


# --- torch.func -----------------------------------------------------------------------------------------------------


def _regression_loss(model: MolformerModel, params: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pooled = functional_call(model, params, (ids, mask)).pooler_output
    return (pooled.tanh().sum(-1) - 0.5).pow(2).sum()


def test_jvp_matches_finite_differences() -> None:
    model = tiny_encoder(seed=11).double()
    ids, mask = padded_batch()
    name = "encoder.layer.0.attention.self.query.weight"
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.manual_seed(0)
    direction = torch.randn_like(params[name])

    def pooled(weight: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, name: weight}, (ids, mask)).pooler_output

    _, tangent = jvp(pooled, (params[name],), (direction,))
    h = 1e-6
    finite = (pooled(params[name] + h * direction) - pooled(params[name] - h * direction)) / (2 * h)
    torch.testing.assert_close(tangent, finite, atol=1e-6, rtol=1e-5)


def test_vmap_per_sample_gradients_match_a_loop() -> None:
    model = tiny_encoder(seed=12).double()
    ids, mask = padded_batch()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict, row_ids: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
        return _regression_loss(model, p, row_ids[None], row_mask[None])

    batched = vmap(grad(one), in_dims=(None, 0, 0))(params, ids, mask)
    for i in range(ids.shape[0]):
        model.zero_grad()
        _regression_loss(model, dict(model.named_parameters()), ids[i:i + 1], mask[i:i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(batched[k][i], p.grad, atol=1e-10, rtol=1e-8)


def test_hessian_of_a_parameter_subset_matches_reverse_over_reverse() -> None:
    model = tiny_encoder(seed=13).double()
    ids, mask = padded_batch()
    name = "encoder.layer.1.output.dense.bias"
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(bias: torch.Tensor) -> torch.Tensor:
        return _regression_loss(model, {**params, name: bias}, ids, mask)

    forward_over_reverse = hessian(loss)(params[name])
    reverse_over_reverse = torch.autograd.functional.hessian(loss, params[name])
    assert forward_over_reverse.shape == (32, 32)
    assert forward_over_reverse.abs().max() > 0
    torch.testing.assert_close(forward_over_reverse, reverse_over_reverse, atol=1e-10, rtol=1e-8)


# --- saving and loading ---------------------------------------------------------------------------------------------


def _save_masked_lm(directory, seed: int = 14) -> MolformerForMaskedLM:
    torch.manual_seed(seed)
    model = perturb(MolformerForMaskedLM(tiny_config()))
    model.save_pretrained(directory)
    return model


def test_save_and_load_round_trip(tmp_path) -> None:
    saved = _save_masked_lm(tmp_path).eval()
    saved.config.deterministic_eval = True
    ids, mask = padded_batch()
    for loaded in (MolformerForMaskedLM.from_pretrained(tmp_path), AutoModelForMaskedLM.from_pretrained(tmp_path)):
        assert isinstance(loaded, MolformerForMaskedLM)
        for name, tensor in saved.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
        loaded.config.deterministic_eval = True
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids, mask).logits, saved(ids, mask).logits)


def test_automodel_loads_the_encoder_out_of_a_masked_lm_checkpoint_with_published_auto_map(tmp_path) -> None:
    saved = _save_masked_lm(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {  # as in the published config.json; must not be followed without trust_remote_code
        "AutoConfig": "configuration_molformer.MolformerConfig",
        "AutoModel": "modeling_molformer.MolformerModel",
        "AutoModelForMaskedLM": "modeling_molformer.MolformerForMaskedLM",
    }
    config.update({"_name_or_path": "ibm/MoLFormer-XL-both-10pct", "torch_dtype": "float32",
                   "transformers_version": "4.34.0"})
    config_file.write_text(json.dumps(config))
    encoder = AutoModel.from_pretrained(tmp_path, trust_remote_code=False)
    assert type(encoder) is MolformerModel
    expected = {k.removeprefix("molformer."): v for k, v in saved.state_dict().items() if k.startswith("molformer.")}
    assert encoder.state_dict().keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(encoder.state_dict()[name], tensor), name


def test_load_encoder_is_deterministic_by_default(tmp_path) -> None:
    saved = _save_masked_lm(tmp_path)
    encoder = load_encoder(str(tmp_path))
    assert isinstance(encoder, MolformerModel) and not encoder.training
    assert encoder.config.deterministic_eval
    ids, mask = padded_batch()
    with torch.no_grad():
        first, second = encoder(ids, mask), encoder(ids, mask)
    assert torch.equal(first.pooler_output, second.pooler_output)
    assert torch.equal(
        encoder.encoder.layer[1].attention.self.feature_map.weight,
        saved.molformer.encoder.layer[1].attention.self.feature_map.weight,
    )
    assert not load_encoder(str(tmp_path), deterministic_eval=False).config.deterministic_eval


def test_load_encoder_reads_an_encoder_only_checkpoint(tmp_path) -> None:
    saved = tiny_encoder(seed=16)
    saved.save_pretrained(tmp_path)
    loaded = load_encoder(str(tmp_path))
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).pooler_output, saved(ids, mask).pooler_output)


def test_load_encoder_reports_a_missing_directory(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist.*hf download ibm/MoLFormer-XL-both-10pct"):
        load_encoder(str(tmp_path / "no-such-model"))


def test_load_encoder_reports_a_directory_without_config(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_encoder(str(tmp_path))


def test_load_encoder_reports_an_unreachable_hub_model() -> None:
    with pytest.raises(ModelLoadError, match="hub.*hf download molinfluence-tests/not-a-model --local-dir DIR"):
        load_encoder("molinfluence-tests/not-a-model", local_files_only=True)


def test_load_encoder_reports_shapes_that_do_not_match_the_config(tmp_path) -> None:
    _save_masked_lm(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["vocab_size"] = 30
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"does not match its config.json.*\(24, 32\).*\(30, 32\)"):
        load_encoder(str(tmp_path))


def test_load_encoder_reports_missing_weights(tmp_path) -> None:
    _save_masked_lm(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["molformer.encoder.layer.0.attention.self.feature_map.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks 1 MoLFormer encoder weights"):
        load_encoder(str(tmp_path))


def test_load_encoder_rejects_another_architecture(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ModelLoadError, match="'bert' model, not a MoLFormer"):
        load_encoder(str(tmp_path))


def test_fresh_models_draw_a_valid_projection() -> None:
    """Building from a config (no checkpoint) fills the projection buffer with a proper draw, not empty memory."""
    model = tiny_encoder(seed=15)
    w = model.encoder.layer[0].attention.self.feature_map.weight
    unit = w[:, :8] / w[:, :8].norm(dim=0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(unit.T @ unit, torch.eye(8), atol=1e-5, rtol=0)
    assert not math.isclose(float(w.abs().sum()), 0.0)
