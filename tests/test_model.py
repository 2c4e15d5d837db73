"""BarcodeMAE: masking properties, encoder sees only visible tokens, decoder mask tokens, loss, gradients,
padding-invariant embeddings, presets, config and FLOP accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from barcodetool.errors import ModelError
from barcodetool.model.mae import (PRESETS, BarcodeMAE, BarcodeMAEConfig, preset, random_masking,
                               training_flops_per_barcode)
from barcodetool.model.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID, KmerTokenizer


def expected_visible(length: int, ratio: float) -> int:
    """round-half-up((1 - ratio) x length), clamped to at least 1 for a non-empty row.

    The clamp is deliberate: a very short barcode with a high mask ratio would otherwise give the encoder
    nothing to look at (and an attention over zero keys); one visible token keeps every non-empty row usable.
    An empty row has no visible token.
    """
    if length == 0:
        return 0
    return max(1, math.floor((1.0 - ratio) * length + 0.5))


def test_expected_visible_examples():
    assert expected_visible(110, 0.5) == 55
    assert expected_visible(5, 0.5) == 3  # 2.5 rounds half up
    assert expected_visible(3, 0.5) == 2  # 1.5 -> 2
    assert expected_visible(1, 0.9) == 1  # 0.1 -> 0, clamped to 1
    assert expected_visible(0, 0.5) == 0


def make_batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, 4104, (len(lengths), width), generator=g)
    lengths_t = torch.tensor(lengths)
    ids[torch.arange(width)[None, :] >= lengths_t[:, None]] = PAD_ID
    return ids, lengths_t


@pytest.fixture(scope="module")
def mae() -> BarcodeMAE:
    torch.manual_seed(0)
    return BarcodeMAE(preset("tiny")).eval()


# ============================================================================================ masking properties
@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    width=st.integers(1, 40),
    ratio=st.floats(0.05, 0.95),
    seed=st.integers(0, 2 ** 31 - 1),
    use_noise=st.booleans(),
)
def test_random_masking_properties(data, width, ratio, seed, use_noise):
    lengths_list = data.draw(st.lists(st.integers(0, width), min_size=1, max_size=6))
    lengths = torch.tensor(lengths_list)
    B = len(lengths_list)
    g = torch.Generator().manual_seed(seed)
    if use_noise:
        noise = torch.rand(B, width, generator=g)
        ids_shuffle, ids_restore, n_visible = random_masking(lengths, width, ratio, noise=noise)
    else:
        ids_shuffle, ids_restore, n_visible = random_masking(lengths, width, ratio, generator=g)
    assert ids_shuffle.shape == ids_restore.shape == (B, width)
    # ids_restore inverts ids_shuffle (gather round trip both ways)
    arange = torch.arange(width).expand(B, width)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), arange)
    assert torch.equal(torch.gather(ids_restore, 1, ids_shuffle), arange)
    capacity = BarcodeMAEConfig(max_tokens=width, mask_ratio=ratio).visible_capacity()
    for b, length in enumerate(lengths_list):
        nv = int(n_visible[b])
        assert nv == expected_visible(length, ratio)
        assert nv <= capacity
        visible = set(ids_shuffle[b, :nv].tolist())
        # pads never visible
        assert all(p < length for p in visible)
        # hidden = real positions ranked after the visible ones
        hidden = {p for p in range(length) if int(ids_restore[b, p]) >= nv}
        assert visible.isdisjoint(hidden)
        assert visible | hidden == set(range(length))
        assert len(hidden) == length - nv
        # real tokens come first in the shuffle, pads last
        assert set(ids_shuffle[b, :length].tolist()) == set(range(length))


def test_random_masking_is_reproducible():
    lengths = torch.tensor([10, 7, 0])
    a = random_masking(lengths, 12, 0.5, generator=torch.Generator().manual_seed(3))
    b = random_masking(lengths, 12, 0.5, generator=torch.Generator().manual_seed(3))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ============================================================================================ encoder / decoder
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.3])
def test_encoder_receives_only_visible_tokens(mae, ratio):
    config = mae.config
    L = config.max_tokens
    ids, lengths = make_batch([L, 60, 7, 1], L)
    seen_embedding_ids, block_inputs = [], []
    h1 = mae.token_embedding.register_forward_pre_hook(lambda m, args: seen_embedding_ids.append(args[0].clone()))
    h2 = mae.encoder_blocks[0].register_forward_pre_hook(lambda m, args: block_inputs.append(args[0].shape))
    try:
        with torch.no_grad():
            mae(ids, lengths, mask_ratio=ratio)
    finally:
        h1.remove()
        h2.remove()
    assert block_inputs == [(4, config.visible_capacity(ratio), config.encoder_width)]
    assert config.visible_capacity(ratio) < L
    assert seen_embedding_ids and all(not (x == MASK_ID).any() for x in seen_embedding_ids)


def test_encoder_output_ignores_hidden_tokens(mae):
    """Changing the k-mers at hidden positions cannot change what the encoder computes for visible ones."""
    L = mae.config.max_tokens
    ids, lengths = make_batch([L, 80, 9], L, seed=1)
    noise = torch.rand(3, L, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latent, slot_valid, ids_restore, n_visible = mae.forward_encoder(ids, lengths, 0.5, noise)
        real = torch.arange(L)[None, :] < lengths[:, None]
        hidden = real & (ids_restore >= n_visible[:, None])
        changed = torch.where(hidden, (ids - NUM_SPECIAL + 17) % 4096 + NUM_SPECIAL, ids)
        assert not torch.equal(changed, ids)
        latent2, slot_valid2, _, _ = mae.forward_encoder(changed, lengths, 0.5, noise)
    assert torch.equal(slot_valid, slot_valid2)
    torch.testing.assert_close(latent[slot_valid], latent2[slot_valid], rtol=0, atol=1e-6)


def test_decoder_input_holds_mask_token_at_hidden_positions(mae):
    L = mae.config.max_tokens
    ids, lengths = make_batch([L, 50, 3], L, seed=4)
    noise = torch.rand(3, L, generator=torch.Generator().manual_seed(5))
    captured = []
    handle = mae.decoder_blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
    try:
        with torch.no_grad():
            mae(ids, lengths, 0.5, noise)
            _, ids_restore, n_visible = random_masking(lengths, L, 0.5, noise=noise)
    finally:
        handle.remove()
    (y,) = captured
    assert y.shape == (3, L, mae.config.decoder_width)
    expected_mask = (mae.mask_token + mae.decoder_position[:, :L]).detach().expand(3, -1, -1)
    real = torch.arange(L)[None, :] < lengths[:, None]
    hidden = real & (ids_restore >= n_visible[:, None])
    visible = real & ~hidden
    assert hidden.any() and visible.any()
    torch.testing.assert_close(y[hidden], expected_mask[hidden], rtol=0, atol=1e-6)
    # visible positions carry the encoder output, not the mask token
    differs = (y[visible] - expected_mask[visible]).abs().amax(dim=-1)
    assert (differs > 1e-3).all()


def test_loss_counts_only_hidden_real_tokens(mae):
    L = mae.config.max_tokens
    lengths_list = [L, 40, 5, 1]
    ids, lengths = make_batch(lengths_list, L, seed=6)
    noise = torch.rand(len(lengths_list), L, generator=torch.Generator().manual_seed(7))
    logits_seen = []
    handle = mae.decoder_head.register_forward_hook(lambda m, args, out: logits_seen.append(out.detach()))
    try:
        with torch.no_grad():
            loss, correct, count = mae(ids, lengths, 0.5, noise)
    finally:
        handle.remove()
    _, ids_restore, n_visible = random_masking(lengths, L, 0.5, noise=noise)
    real = torch.arange(L)[None, :] < lengths[:, None]
    hidden = real & (ids_restore >= n_visible[:, None])
    assert int(count) == int(hidden.sum()) == sum(n - expected_visible(n, 0.5) for n in lengths_list)
    (logits,) = logits_seen
    manual = F.cross_entropy(logits[hidden], ids[hidden])
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-6)
    assert int(correct) == int((logits.argmax(-1) == ids)[hidden].sum())

    # k-mers at pad positions are irrelevant to the loss
    pads = ~real
    junk = torch.randint(NUM_SPECIAL, 4104, ids.shape, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        loss2, correct2, count2 = mae(torch.where(pads, junk, ids), lengths, 0.5, noise)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-6)
    assert int(count2) == int(count) and int(correct2) == int(correct)


def test_forward_on_a_narrow_batch_matches_full_width(mae):
    """A batch padded only to its longest row gives the same loss as one padded to max_tokens."""
    L = mae.config.max_tokens
    ids, lengths = make_batch([20, 13, 4], 20, seed=9)
    noise = torch.rand(3, L, generator=torch.Generator().manual_seed(10))
    wide = torch.zeros(3, L, dtype=torch.long)
    wide[:, :20] = ids
    with torch.no_grad():
        narrow_out = mae(ids, lengths, 0.5, noise[:, :20])
        wide_out = mae(wide, lengths, 0.5, noise)
    torch.testing.assert_close(narrow_out[0], wide_out[0], rtol=1e-5, atol=1e-5)
    assert int(narrow_out[2]) == int(wide_out[2])


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(1)
    model = BarcodeMAE(preset("tiny")).train()
    L = model.config.max_tokens
    ids, lengths = make_batch([L, 64, 12, 2], L, seed=11)
    loss, _, _ = model(ids, lengths)
    assert torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.mask_token.grad.abs().sum() > 0
    assert model.token_embedding.weight.grad[MASK_ID].abs().sum() == 0  # the MASK id is never embedded


def test_encoder_only_model_cannot_pretrain():
    model = BarcodeMAE(preset("tiny"), include_decoder=False)
    assert not any(name.startswith("decoder_") or name == "mask_token" for name in model.state_dict())
    ids, lengths = make_batch([10], 10)
    with pytest.raises(ModelError):
        model(ids, lengths)
    assert model.embed(ids, lengths).shape == (1, 32)


# ============================================================================================ embeddings
def test_embed_independent_of_batch_composition_and_padding(mae):
    tok = KmerTokenizer()
    g = torch.Generator().manual_seed(12)
    bases = "ACGT"
    sequences = ["".join(bases[i] for i in torch.randint(0, 4, (n,), generator=g).tolist())
                 for n in (130, 658, 400, 61)]
    with torch.no_grad():
        ids, lengths = tok.encode_batch([sequences[0]])
        alone = mae.embed(torch.from_numpy(ids), torch.from_numpy(lengths))
        ids, lengths = tok.encode_batch(sequences)
        assert ids.shape[1] > lengths[0]
        batched = mae.embed(torch.from_numpy(ids), torch.from_numpy(lengths))
        ids, lengths = tok.encode_batch([sequences[0]], pad_to=110)
        padded = mae.embed(torch.from_numpy(ids), torch.from_numpy(lengths))
        ids, lengths = tok.encode_batch(sequences[::-1])
        reversed_batch = mae.embed(torch.from_numpy(ids), torch.from_numpy(lengths))
    assert alone.shape == (1, mae.config.embedding_dim) and alone.dtype == torch.float32
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(reversed_batch.flip(0), batched, rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_embed_is_masked_mean_of_last_layer(mae):
    ids, lengths = make_batch([30, 12], 30, seed=13)
    with torch.no_grad():
        states = mae.encode(ids, lengths)
        pooled = mae.embed(ids, lengths)
        single = mae.encode(ids[1:, :12], lengths[1:])
    torch.testing.assert_close(pooled[0], states[0, :30].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[1], single[0].mean(0), rtol=0, atol=1e-5)


def test_embedding_projection_maps_the_pooled_state():
    torch.manual_seed(3)
    model = BarcodeMAE(preset("tiny", embedding_width=48), include_decoder=False).eval()
    assert model.config.embedding_dim == 48 and "embedding_projection.weight" in model.encoder_state_dict()
    ids, lengths = make_batch([30, 12], 30, seed=14)
    with torch.no_grad():
        states = model.encode(ids, lengths)
        pooled = torch.stack([states[0, :30].mean(0), states[1, :12].mean(0)])
        expected = model.embedding_projection(pooled)
        embedded = model.embed(ids, lengths)
    assert embedded.shape == (2, 48)
    torch.testing.assert_close(embedded, expected, rtol=0, atol=1e-5)


# ============================================================================================ config
def test_presets_and_base_shape():
    assert {"base", "small", "fast", "tiny"} <= set(PRESETS)
    base = preset("base")
    assert (base.encoder_layers, base.decoder_layers) == (6, 6)
    assert base.encoder_width == base.decoder_width == 768
    assert base.encoder_heads == base.decoder_heads == 6
    assert base.k == 6 and base.max_tokens == 110 and base.vocab_size == 4104
    assert base.mask_ratio == 0.5 and base.visible_capacity() == 55
    assert preset("tiny", mask_ratio=0.25).mask_ratio == 0.25
    with pytest.raises(ModelError, match="base"):
        preset("huge")


def test_config_round_trip_and_validation():
    config = preset("small", mask_ratio=0.6)
    assert BarcodeMAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="bogus"):
        BarcodeMAEConfig.from_dict({**config.to_dict(), "bogus": 1})
    # the projection's setting is written only where there is one: other cards stay as older versions wrote them
    assert "embedding_width" not in config.to_dict()
    projected = preset("nano")
    assert projected.to_dict()["embedding_width"] == 128 and projected.embedding_dim == 128
    assert BarcodeMAEConfig.from_dict(projected.to_dict()) == projected
    for bad in ({"encoder_width": 100, "encoder_heads": 6}, {"mask_ratio": 0.0}, {"mask_ratio": 1.0},
                {"max_tokens": 0}, {"encoder_layers": 0}, {"embedding_width": -1}):
        with pytest.raises(ModelError):
            BarcodeMAEConfig(**bad)


def test_training_flops_of_base_about_43_gflop():
    flops = training_flops_per_barcode(preset("base"))
    assert abs(flops - 43e9) / 43e9 < 0.10, flops
    # hiding more tokens makes the encoder cheaper
    assert training_flops_per_barcode(preset("base"), mask_ratio=0.75) < flops
    assert training_flops_per_barcode(preset("tiny")) < flops / 100
