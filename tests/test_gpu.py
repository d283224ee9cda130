"""Every sparse-kernel path on a CUDA device: gradchecks of "csr" (cuSPARSE) and "gather", the
kernels in float32 and bf16 against float64 dense maths, bf16 autocast, JumpReLU's STE under
autocast, torch.compile, and a short training run that matches the CPU's.

Marked `gpu` and skipped without CUDA (`make test` on a machine without one skips them all).
SAEKIT_GPU_TEST_DEVICE=cpu runs the same tests on the CPU (a dry run of the tests themselves).
"""

from __future__ import annotations

import os

import pytest
import torch

from saekit.sae import SAEConfig, build_sae, normalize_decoder_, remove_parallel_decoder_grad_
from saekit.sae.kernels import (SparseLatents, select_batch_topk, select_topk, sparse_decode, sparse_encode,
                                topk_decode, topk_encode)

DEVICE = os.environ.get("SAEKIT_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]
IMPLS = ["csr", "gather"]
SELECTS = {"topk": select_topk(3), "batch_topk": select_batch_topk(3)}


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 products: comparisons below are against float64 and the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("select", SELECTS, ids=list(SELECTS))
def test_sparse_encode_passes_gradcheck_on_the_device(impl, select):
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5, 12), (12,), (5,)]  # x, W_enc, b_enc, b_dec
    inputs = [torch.randn(*s, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_() for s in shapes]
    assert torch.autograd.gradcheck(lambda *a: sparse_encode(*a, select=SELECTS[select], impl=impl).values, inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_decode_passes_gradcheck_on_the_device(impl):
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 2, 2, 5, 6], device=DEVICE)  # token 1 has no active latent
    indices = torch.tensor([1, 7, 0, 3, 9, 4], device=DEVICE)
    values = torch.rand(6, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    W_dec = torch.randn(10, 3, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, w: sparse_decode(SparseLatents(v, indices, offsets), w, impl), [values, W_dec])


def _topk_loss_and_grads(params: list[torch.Tensor], impl: str, k: int = 8):
    x, W_enc, b_enc, b_dec, W_dec = params
    top_acts, top_indices = topk_encode(x, W_enc, b_enc, b_dec, k, impl)
    loss = topk_decode(top_acts, top_indices, W_dec, impl).float().pow(2).sum()
    return loss, torch.autograd.grad(loss, params)


def _params(dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()  # as tests/test_sae_kernels.py
            for shape in ((64, 32), (32, 256), (256,), (32,), (256, 32))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sparse_kernels_in_float32_and_bf16_match_float64_dense_maths(impl, dtype):
    """Parameters in `dtype` on the device against float64 on the CPU: float32 to ~1e-5, bf16 to its
    8-bit mantissa (a gradient's direction to 1 - cos < 2e-2: the top-k set moves with rounding)."""
    want_loss, want = _topk_loss_and_grads(_params(torch.float64, "cpu"), "gather")
    got_loss, got = _topk_loss_and_grads(_params(getattr(torch, dtype), DEVICE), impl)
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert abs(got_loss.item() - want_loss.item()) / want_loss.item() < tol
    for name, g, w in zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], got, want):
        assert g.dtype == getattr(torch, dtype), name
        cos = torch.nn.functional.cosine_similarity(g.double().cpu().flatten(), w.flatten(), dim=0)
        assert 1 - cos < tol, (name, 1 - cos.item())


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_with_float32_parameters_matches_float32_on_the_device(impl):
    want_loss, want = _topk_loss_and_grads(_params(torch.float32, DEVICE), impl)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        got_loss, got = _topk_loss_and_grads(_params(torch.float32, DEVICE), impl)
    assert abs(got_loss.item() - want_loss.item()) / want_loss.item() < 5e-3
    for name, g, w in zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], got, want):
        assert g.dtype == torch.float32, name
        assert 1 - torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0) < 5e-3, name


def test_jumprelu_threshold_gradient_under_device_bf16_autocast_matches_float32():
    sae = build_sae(SAEConfig(architecture="jumprelu", d_in=128, d_sae=1024)).to(DEVICE)
    x = torch.randn(2048, 128, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        sae.log_threshold.copy_(sae.pre_acts(x).quantile(0.8, dim=0).clamp_min(1e-3).log())
    grads = []
    for autocast in (False, True):
        sae.zero_grad()
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=autocast):
            sae(x).loss.backward()
        grads.append(sae.log_threshold.grad.clone())
    assert (grads[0] == 0).sum() == (grads[1] == 0).sum() == 0
    assert torch.corrcoef(torch.stack(grads))[0, 1] > 0.99


def _train(architecture: str, impl: str, device: str, steps: int = 10, compile: bool = False) -> tuple[list[float], dict]:
    """`steps` Adam steps on a fixed batch, as the trainer takes them (decoder projection and
    renormalisation, dead latents for AuxK); (losses, final state on the CPU)."""
    cfg = SAEConfig(architecture=architecture, d_in=32, d_sae=256, k=8, k_aux=16, sparse_impl=impl)
    sae = build_sae(cfg).to(device).train()
    forward = torch.compile(sae) if compile else sae
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(0)).to(device)
    dead = (torch.arange(256, device=device) % 7 == 0) if architecture != "jumprelu" else None
    losses = []
    for _ in range(steps):
        out = forward(x, dead_mask=dead)
        out.loss.backward()
        remove_parallel_decoder_grad_(sae)
        opt.step()
        opt.zero_grad()
        normalize_decoder_(sae)
        losses.append(out.loss.item())
    return losses, {k: v.detach().cpu() for k, v in sae.state_dict().items()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu"])
def test_short_training_run_on_the_device_matches_the_cpu(architecture, impl):
    """float32 without TF32 on both; summation orders differ, and a near-tie in a top-k can flip, so
    the tolerance is loose next to float32's precision but far below a step's change (lr 1e-3)."""
    cpu_losses, cpu_state = _train(architecture, impl, "cpu")
    losses, state = _train(architecture, impl, DEVICE)
    assert losses == pytest.approx(cpu_losses, rel=5e-3, abs=1e-5)
    for name, value in cpu_state.items():
        assert torch.allclose(state[name], value, rtol=5e-3, atol=5e-4), name


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu"])
def test_compiled_training_on_the_device_matches_eager(architecture):
    eager_losses, eager_state = _train(architecture, "csr", DEVICE, steps=5)
    torch._dynamo.reset()
    losses, state = _train(architecture, "csr", DEVICE, steps=5, compile=True)
    assert losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)
    for name, value in eager_state.items():
        assert torch.allclose(state[name], value, rtol=1e-4, atol=1e-5), name
