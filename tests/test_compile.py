"""`torch.compile` of the training forward: one graph, no break, for topk, batchtopk and jumprelu;
the compiled step's losses and gradients equal eager mode's (traced on CPU; no C compiler needed).

Before: `torch._dynamo.explain` found 10 graph breaks in a TopK forward with dead latents and 21 in
BatchTopK's (`Tensor.item()`, `bool(dead_mask.any())`, the one-thread lock, data-dependent shapes)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo

from saekit.sae import SAEConfig, build_sae

ARCHITECTURES = ["topk", "batchtopk", "jumprelu"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(architecture: str):
    """A small float32 SAE in training mode, a batch, and 6 dead latents (fewer than k_aux = 16)."""
    cfg = SAEConfig(architecture=architecture, d_in=32, d_sae=256, k=8, k_aux=16)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::50] = True
    return cfg, x, (dead if architecture != "jumprelu" else None)


@pytest.mark.parametrize("dead", ["some_dead", "none_dead"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_forward_traces_to_one_graph_without_breaks(architecture, dead):
    cfg, x, dead_mask = make(architecture)
    if dead_mask is not None and dead == "none_dead":
        dead_mask = torch.zeros_like(dead_mask)
    sae = build_sae(cfg).train()
    explained = torch._dynamo.explain(sae)(x, dead_mask=dead_mask)
    assert explained.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_compiled_steps_equal_eager_steps_in_loss_gradients_and_threshold(architecture):
    """fullgraph=True (an error on any break) with AOTAutograd, which traces the backward too:
    the sparse kernels' custom ops and the fixed-shape AuxK of the compiled path give eager's numbers."""
    cfg, x, dead_mask = make(architecture)
    eager, compiled = build_sae(cfg).train(), build_sae(cfg).train()
    step = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        want, got = eager(x, dead_mask=dead_mask), step(x, dead_mask=dead_mask)
        want.loss.backward()
        got.loss.backward()
        for name in ("loss", "fvu", "aux_k", "l0"):
            assert torch.allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-7), name
    if architecture != "jumprelu":
        assert want.aux_k > 0
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name
    if architecture == "batchtopk":
        assert compiled.threshold[0] > 0 and torch.allclose(compiled.threshold, eager.threshold)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_compiled_forward_does_not_recompile_as_dead_latents_and_data_change(architecture):
    cfg, x, dead_mask = make(architecture)
    step = torch.compile(build_sae(cfg).train(), backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(3):
            dead = None if dead_mask is None else torch.arange(cfg.d_sae) % (5 + 40 * i) == 0
            step(x * (1 + i), dead_mask=dead).loss.backward()
