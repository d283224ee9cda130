"""The sparse TopK/BatchTopK kernels (saekit.sae.kernels): gradchecks and agreement with dense maths."""

from __future__ import annotations

import pytest
import torch

from saekit.sae.kernels import (
    SparseLatents, select_batch_topk, select_topk, select_topk_among, sparse_decode, sparse_encode,
    sparse_encode_many, topk_decode, topk_encode,
)

IMPLS = ["csr", "gather"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("select", [select_topk(3), select_batch_topk(3)], ids=["topk", "batch_topk"])
def test_sparse_encode_passes_gradcheck(impl, select):
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5, 12), (12,), (5,)]  # x, W_enc, b_enc, b_dec
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for shape in shapes]
    assert torch.autograd.gradcheck(lambda *a: sparse_encode(*a, select=select, impl=impl).values, inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_decode_passes_gradcheck_with_uneven_rows(impl):
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 2, 2, 5, 6])  # token 1 has no active latent
    indices = torch.tensor([1, 7, 0, 3, 9, 4])
    values = torch.rand(6, generator=gen, dtype=torch.float64).requires_grad_()
    W_dec = torch.randn(10, 3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, w: sparse_decode(SparseLatents(v, indices, offsets), w, impl), [values, W_dec])


@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_encode_decode_gradients_equal_the_dense_computation(impl):
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
              for shape in ((20, 8), (8, 40), (40,), (8,), (40, 8))]
    x, W_enc, b_enc, b_dec, W_dec = params
    target = torch.randn(20, 8, generator=gen, dtype=torch.float64)

    top_acts, top_indices = topk_encode(x, W_enc, b_enc, b_dec, 5, impl)
    sparse_loss = (topk_decode(top_acts, top_indices, W_dec, impl) - target).pow(2).sum()
    sparse_grads = torch.autograd.grad(sparse_loss, params)

    pre = (x - b_dec) @ W_enc + b_enc
    values, indices = pre.topk(5, dim=1)
    dense_latents = torch.zeros_like(pre).scatter(1, indices, values.relu())
    dense_loss = (dense_latents @ W_dec - target).pow(2).sum()
    dense_grads = torch.autograd.grad(dense_loss, params)

    assert torch.allclose(sparse_loss, dense_loss)
    for name, got, want in zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], sparse_grads, dense_grads):
        assert torch.allclose(got, want), name


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_decode_accepts_indices_in_any_order(impl):
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(30, 4, generator=gen, dtype=torch.float64).requires_grad_()
    top_indices = torch.stack([torch.randperm(30, generator=gen)[:5] for _ in range(8)])
    top_acts = torch.rand(8, 5, generator=gen, dtype=torch.float64).requires_grad_()
    dense = torch.zeros(8, 30, dtype=torch.float64).scatter(1, top_indices, top_acts)
    assert not (top_indices.diff(dim=1) > 0).all()
    assert torch.allclose(topk_decode(top_acts, top_indices, W_dec, impl), dense @ W_dec)
    assert torch.autograd.gradcheck(lambda a, w: topk_decode(a, top_indices, w, impl), [top_acts, W_dec])


def test_batch_topk_selection_keeps_the_largest_entries_of_the_whole_batch():
    pre = torch.randn(16, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pre[3] += 10.0  # one token beats every other: all 50 of its latents are among the batch's top 64
    want = pre.flatten().topk(64).values
    values, indices, offsets = select_batch_topk(k=4, oversample=13)(pre)  # 52 candidates per token
    assert values.numel() == 64
    assert torch.equal(values.sort().values, want.sort().values)
    assert offsets[4] - offsets[3] == 50  # token 3 keeps all its latents, others fewer
    rows = torch.repeat_interleave(torch.arange(16), offsets.diff())
    assert torch.equal(pre[rows, indices], values)
    assert ((indices.diff() > 0) | (rows.diff() > 0)).all()  # CSR order: latents increase within a token
    # With 16 candidates per token, token 3 keeps its 16 largest and the batch's next ones fill in
    values, indices, offsets = select_batch_topk(k=4, oversample=4)(pre)
    assert values.numel() == 64 and offsets[4] - offsets[3] == 16
    others = torch.cat([pre[:3], pre[4:]]).flatten().topk(48).values
    assert torch.equal(values.sort().values, torch.cat([pre[3].topk(16).values, others]).sort().values)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_with_float32_parameters_matches_float32(impl):
    """The GPU training setting (float32 parameters, bf16 autocast), run here on the CPU: the encoder
    product is 16-bit, the sparse rest runs in float32, and gradients land in float32 close to the
    float32 computation's."""
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(*shape, generator=gen).requires_grad_()
              for shape in ((64, 32), (32, 256), (256,), (32,), (256, 32))]
    x, W_enc, b_enc, b_dec, W_dec = params

    def loss_and_grads():
        top_acts, top_indices = topk_encode(x, W_enc, b_enc, b_dec, 8, impl)
        loss = topk_decode(top_acts, top_indices, W_dec, impl).float().pow(2).sum()
        return loss, torch.autograd.grad(loss, params)

    want_loss, want_grads = loss_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_loss, got_grads = loss_and_grads()
    # Measured on this seed (both impls, CPU): loss relative error 9.7e-4; 1 - cosine of the gradients
    # x 1.4e-3, W_enc 6.1e-4, b_enc 2.6e-4, b_dec 6.4e-5, W_dec 1.5e-3; |norm ratio - 1| at most 3.4e-3
    # (b_dec). Almost all of it is the 3% of tokens whose top-k set changes when pre-activations are
    # rounded to bf16; the tolerances are ~3-5x the measured errors.
    assert abs(got_loss.item() - want_loss.item()) / want_loss.item() < 5e-3
    for name, got, want in zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], got_grads, want_grads):
        assert got.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert 1 - cos < 5e-3, (name, 1 - cos.item())
        assert abs(got.norm() / want.norm() - 1) < 1e-2, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("among", ["all", "odd"])
def test_two_selections_of_one_encoder_product_equal_two_separate_encodes(impl, among):
    """TopK's and AuxK's selections share one forward product and one backward; with every latent
    in both (among="all") the same (token, latent) pairs appear twice and their gradients add."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
              for shape in ((24, 8), (8, 40), (40,), (8,))]
    weights = [torch.randn(24, n, generator=gen, dtype=torch.float64) for n in (5, 6)]
    latents = torch.arange(40) if among == "all" else torch.arange(1, 40, 2)
    selects = [select_topk(5), select_topk_among(latents, 6)]

    def loss(parts):
        return sum((part.values.view(24, -1) * w).sum() + part.values.pow(2).sum() for part, w in zip(parts, weights))

    merged = sparse_encode_many(*params, selects, impl)
    separate = [sparse_encode(*params, select, impl) for select in selects]
    assert set(merged[1].indices.tolist()) <= set(latents.tolist())
    for got, want in zip(merged, separate):
        assert torch.equal(got.indices, want.indices) and torch.allclose(got.values, want.values)
    for name, got, want in zip(["x", "W_enc", "b_enc", "b_dec"], torch.autograd.grad(loss(merged), params),
                               torch.autograd.grad(loss(separate), params)):
        assert torch.allclose(got, want), name
