"""Behaviour of saekit.sae: the four architectures, weight helpers, save/load (kernels: test_sae_kernels.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from saekit.sae import (
    SAEConfig, build_sae, estimate_activation_scale, fired_mask, fold_normalization, init_b_dec,
    load_sae_dir, normalize_decoder_, remove_parallel_decoder_grad_, save_sae,
)
from saekit.sae.weights import geometric_median

ARCHITECTURES = ["relu", "topk", "batchtopk", "jumprelu"]
IMPLS = ["csr", "gather"]


def make_sae(architecture: str, d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0, **kwargs):
    """A small float64 SAE with non-zero biases, so that every term of the maths is exercised."""
    cfg = SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, k=k, seed=seed, dtype="float64", **kwargs)
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen, dtype=torch.float64))
        if architecture == "jumprelu":
            sae.log_threshold.fill_(torch.tensor(0.3).log())
        if architecture == "batchtopk":
            sae.threshold.fill_(0.8)
    return sae


def activations(n_tokens: int = 32, d_in: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_tokens, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# --- TopK -----------------------------------------------------------------------------------------

def dense_topk_reference(sae, x: torch.Tensor, dead_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """TopK SAE forward written the plain dense way: encode, topk, dense decode; AuxK likewise."""
    cfg = sae.cfg
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, indices = pre.topk(cfg.k, dim=1)
    recon = torch.zeros_like(pre).scatter(1, indices, values.relu()) @ sae.W_dec + sae.b_dec
    total_variance = (x - x.mean(0)).pow(2).sum()
    fvu = (recon - x).pow(2).sum() / total_variance
    aux = torch.zeros((), dtype=x.dtype)
    if dead_mask is not None and dead_mask.any():
        k_aux = min(cfg.resolved_k_aux, int(dead_mask.sum()))
        dead_values, dead_indices = pre.masked_fill(~dead_mask, -torch.inf).topk(k_aux, dim=1)
        residual_hat = torch.zeros_like(pre).scatter(1, dead_indices, dead_values.relu()) @ sae.W_dec
        scale = min(int(dead_mask.sum()) / cfg.resolved_k_aux, 1.0)
        aux = scale * (residual_hat - (x - recon).detach()).pow(2).sum() / total_variance
    return {"recon": recon, "fvu": fvu, "aux_k": aux, "loss": fvu + cfg.aux_coef * aux}


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_forward_equals_dense_reference_in_value_and_gradient(impl):
    sae = make_sae("topk", k_aux=20, sparse_impl=impl)  # 13 dead < k_aux: AuxK scaled by 13/20
    x = activations()
    dead_mask = torch.zeros(64, dtype=torch.bool)
    dead_mask[::5] = True
    out = sae(x, dead_mask=dead_mask)
    ref = dense_topk_reference(sae, x, dead_mask)
    for name in ("recon", "fvu", "aux_k", "loss"):
        assert torch.allclose(getattr(out, name), ref[name]), name
    params = list(sae.parameters())
    for got, want, p in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(ref["loss"], params),
                            sae.named_parameters()):
        assert torch.allclose(got, want), p[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_batchtopk_auxk_equals_dense_reference_in_value_and_gradient(impl):
    sae = make_sae("batchtopk", k_aux=6, sparse_impl=impl).train()
    x = activations()
    dead_mask = torch.zeros(64, dtype=torch.bool)
    dead_mask[1::3] = True
    out = sae(x, dead_mask=dead_mask)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    dead_values, dead_indices = pre.masked_fill(~dead_mask, -torch.inf).topk(6, dim=1)
    residual_hat = torch.zeros_like(pre).scatter(1, dead_indices, dead_values.relu()) @ sae.W_dec
    total_variance = (x - x.mean(0)).pow(2).sum()
    want = (residual_hat - (x - out.recon).detach()).pow(2).sum() / total_variance
    assert torch.allclose(out.aux_k, want)
    params = list(sae.parameters())
    for got, ref, (name, _) in zip(torch.autograd.grad(out.aux_k, params, allow_unused=True),
                                   torch.autograd.grad(want, params, allow_unused=True), sae.named_parameters()):
        assert (got is None and ref is None) or torch.allclose(got, ref), name


def test_topk_has_exactly_k_active_latents_per_token():
    sae = make_sae("topk", k=5)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive, so relu never drops a selected one
    out = sae(activations())
    assert out.latent_acts.shape == out.latent_indices.shape == (32, 5)
    assert ((sae.encode(activations()) != 0).sum(dim=1) == 5).all()
    assert out.l0.item() == 5


@pytest.mark.parametrize("dead", [None, "none_dead"])
def test_auxk_is_zero_without_dead_latents(dead):
    sae = make_sae("topk")
    mask = None if dead is None else torch.zeros(64, dtype=torch.bool)
    out = sae(activations(), dead_mask=mask)
    assert out.aux_k.item() == 0.0
    assert torch.equal(out.loss, out.fvu)


def test_auxk_is_positive_with_dead_latents_and_trains_them():
    sae = make_sae("topk", k_aux=8)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[40:] = True
    out = sae(activations(), dead_mask=dead)
    assert out.aux_k.item() > 0
    grad = torch.autograd.grad(out.aux_k, sae.W_enc)[0]
    assert grad[:, 40:].abs().sum() > 0
    assert grad[:, :40].abs().sum() == 0  # only dead latents take part in AuxK


# --- every architecture ---------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shapes_of_encode_decode_and_forward(architecture):
    sae = make_sae(architecture)
    x = activations()
    out = sae(x)
    assert out.recon.shape == (32, 16)
    want = {"topk": (32, 4), "batchtopk": (32 * 4,)}.get(architecture, (32, 64))  # batchtopk: CSR, k*B entries
    assert out.latent_acts.shape == want
    assert (out.latent_indices is None) == (architecture not in ("topk", "batchtopk"))
    assert (out.latent_offsets is not None) == (architecture == "batchtopk")
    assert out.dense_latents(64).shape == (32, 64)
    for name in ("mse", "fvu", "l0", "l1", "aux_k", "loss"):
        assert getattr(out, name).shape == (), name
    assert sae.encode(x.reshape(4, 8, 16)).shape == (4, 8, 64)
    assert sae.decode(torch.zeros(4, 8, 64, dtype=torch.float64)).shape == (4, 8, 16)
    with pytest.raises(ValueError, match="d_in"):
        sae.encode(torch.zeros(3, 15, dtype=torch.float64))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_inference_forward_reconstruction_equals_decode_of_encode(architecture):
    sae = make_sae(architecture).eval()
    x = activations()
    with torch.no_grad():
        out = sae(x)
        latents = sae.encode(x)
    assert (latents != 0).any() and (latents == 0).any()
    assert torch.allclose(out.recon, sae.decode(latents))
    assert torch.allclose(out.dense_latents(64), latents)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_step_lowers_the_loss(architecture):
    sae = make_sae(architecture)
    x = activations(64)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = sae(x).loss
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert sae(x).loss.item() < first


def test_fired_mask_marks_latents_active_on_some_token():
    topk = make_sae("topk")
    out = topk(activations())
    fired = fired_mask(out, 64)
    assert torch.equal(fired, (topk.encode(activations()) > 0).any(dim=0))
    relu = make_sae("relu")
    assert torch.equal(fired_mask(relu(activations()), 64), (relu.encode(activations()) > 0).any(dim=0))


# --- BatchTopK ------------------------------------------------------------------------------------

def test_batchtopk_keeps_k_latents_per_token_on_average_and_learns_a_threshold():
    sae = make_sae("batchtopk", k=4)
    with torch.no_grad():
        sae.threshold.zero_()
    out = sae(activations(32))
    dense = out.dense_latents(64)
    per_token = (dense != 0).sum(dim=1)
    assert per_token.sum().item() == 32 * 4
    assert per_token.min() < per_token.max()  # the batch shares k, tokens do not each get k
    pre = sae.pre_acts(activations(32))
    assert torch.allclose(dense[dense != 0].sort().values, pre.flatten().topk(32 * 4).values.sort().values)
    smallest_kept = dense[dense > 0].min()
    assert torch.allclose(sae.threshold, smallest_kept.expand(64))  # first update sets it outright
    sae(activations(32, seed=1))
    assert not torch.allclose(sae.threshold, smallest_kept.expand(64))  # later ones move it


# --- JumpReLU -------------------------------------------------------------------------------------

def test_jumprelu_is_zero_at_or_below_the_threshold_and_identity_above():
    sae = make_sae("jumprelu")
    x = activations()
    with torch.no_grad():
        latents = sae.encode(x)
        pre = sae.pre_acts(x)
    above = pre > 0.3
    assert above.any() and (~above & (pre > 0)).any()
    assert torch.equal(latents[~above], torch.zeros_like(latents[~above]))
    assert torch.allclose(latents[above], pre[above])


def identity_jumprelu(pre: torch.Tensor, threshold: float = 0.3, **kwargs):
    """A JumpReLU SAE with W_enc = I and zero biases: pre-activations equal the input."""
    sae = make_sae("jumprelu", d_in=pre.shape[1], d_sae=pre.shape[1], **kwargs)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(pre.shape[1], dtype=torch.float64))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.log_threshold.fill_(torch.tensor(threshold, dtype=torch.float64).log())
    return sae


@pytest.mark.parametrize("term", ["activation", "l0"])
def test_jumprelu_straight_through_gradient_is_the_rectangle_kernel_formula(term):
    """Default bandwidth eps, pre-activations in and just out of |pre - theta| < eps/2: per latent,
    d/dtheta sum(latents) = -(theta/eps) #inside, d/dtheta L0 = -(1/eps) #inside / n_tokens (times theta for log)."""
    eps = SAEConfig(architecture="jumprelu", d_in=3).resolved_jumprelu_bandwidth  # the default
    theta = 0.3
    offsets = torch.tensor([[-0.45, 0.1, 0.6], [0.0, -0.6, 0.7], [0.3, 0.8, -0.8],  # [tokens, latents], in eps
                            [0.49, -3.0, 1.5], [-0.55, 0.51, -2.0], [2.0, -0.2, 0.45]], dtype=torch.float64)
    n_inside = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)  # |offset| < 1/2, per latent
    pre = theta + offsets * eps
    sae = identity_jumprelu(pre, theta)
    out = sae(pre)
    value = out.latent_acts.sum() if term == "activation" else out.l0
    grad = torch.autograd.grad(value, sae.log_threshold)[0]
    per_threshold = -(theta / eps) * n_inside if term == "activation" else -(1 / eps) * n_inside / pre.shape[0]
    assert torch.allclose(grad, theta * per_threshold, rtol=1e-9, atol=0)


def test_jumprelu_training_raises_thresholds_of_unneeded_latents_and_lowers_needed_ones():
    """Planted, pre-activations inside the STE window (default bandwidth): latent 0 reconstructs the input
    (its threshold must fall), latent 1 has a zero decoder row, so only L0 acts (its threshold must rise)."""
    defaults = SAEConfig(architecture="jumprelu", d_in=2)
    theta = defaults.resolved_jumprelu_init_threshold  # 0.001 * sqrt(2), as training starts
    eps = defaults.resolved_jumprelu_bandwidth
    x = torch.tensor([[1.0, 1.0]] * 8, dtype=torch.float64)
    sae = identity_jumprelu(x, theta, l0_coef=1e-4)
    with torch.no_grad():
        sae.b_enc.fill_(theta + 0.2 * eps - 1.0)  # pre = 1 + b_enc = theta + 0.2 eps, inside the window
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert ((sae.pre_acts(x) - theta).abs() < eps / 2).all()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(10):
        sae(x).loss.backward()
        opt.step()
        opt.zero_grad()
    needed, unneeded = sae.threshold.detach()  # measured: 0.961 and 1.041 times theta
    assert needed < theta * 0.98
    assert unneeded > theta * 1.02


def test_jumprelu_defaults_are_gemma_scopes_on_saekits_input_scale():
    """Gemma Scope's 0.001 is for inputs of unit mean squared norm; saekit's have E||x|| = sqrt(d_in)."""
    cfg = SAEConfig(architecture="jumprelu", d_in=2304)
    assert cfg.resolved_jumprelu_bandwidth == pytest.approx(0.048)
    assert cfg.resolved_jumprelu_init_threshold == pytest.approx(0.048)
    assert build_sae(cfg).threshold[0].item() == pytest.approx(0.048)
    explicit = SAEConfig(architecture="jumprelu", d_in=2304, jumprelu_bandwidth=0.001, jumprelu_init_threshold=0.002)
    assert (explicit.resolved_jumprelu_bandwidth, explicit.resolved_jumprelu_init_threshold) == (0.001, 0.002)


def jumprelu_threshold_grads(d_in: int = 128, d_sae: int = 1024, tokens: int = 2048, **kwargs):
    """d loss / d log_threshold [d_sae] of a float32 JumpReLU SAE, without and with CPU bf16 autocast,
    on inputs at saekit's scale (E||x|| ~ sqrt(d_in)) with trained-like thresholds near 0.9-1
    (each latent fires on ~20% of tokens), where bf16's spacing (0.004) exceeds Gemma Scope's bandwidth."""
    sae = build_sae(SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=d_sae, **kwargs))
    x = torch.randn(tokens, d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.log_threshold.copy_(sae.pre_acts(x).quantile(0.8, dim=0).clamp_min(1e-3).log())
    grads = []
    for autocast in (False, True):
        sae.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sae(x).loss.backward()
        grads.append(sae.log_threshold.grad.clone())
    return grads


@pytest.mark.parametrize("bandwidth", [None, 0.001], ids=["default", "gemma_scope"])
def test_jumprelu_threshold_gradient_under_bf16_autocast_matches_float32(bandwidth):
    """The GPU training setting (float32 parameters, bf16 autocast) on the CPU. Before the fix the
    pre-activations came out of the matmul in bf16: measured on main before the fix, with the
    default bandwidth (then 0.001), 790 of 1024 thresholds got zero gradient (492 in float32) and
    the per-latent gradients correlated 0.120 (both cases failed). Now: bf16 and float32 give the
    same zero counts (0 with the default bandwidth 0.0113 at d_in 128; 492 with 0.001) and
    correlation 1.000 (the decoder's bf16 product is the only difference)."""
    want, got = jumprelu_threshold_grads(**({} if bandwidth is None else {"jumprelu_bandwidth": bandwidth}))
    if bandwidth is None:  # on saekit's scale the window catches tokens for every latent
        assert (want == 0).sum() == 0
    assert (got == 0).sum() <= (want == 0).sum() + 5
    assert torch.corrcoef(torch.stack([want, got]))[0, 1] > 0.99
    assert got.norm() / want.norm() == pytest.approx(1, abs=0.02)


# --- ReLU -----------------------------------------------------------------------------------------

def test_relu_l1_penalty_is_weighted_by_decoder_row_norms():
    sae = make_sae("relu", l1_coef=3.0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 4.0, 64, dtype=torch.float64)[:, None])
    x = activations()
    out = sae(x)
    latents = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).clamp(min=0)
    by_hand = sum(latents[t, i] * sae.W_dec[i].norm() for t in range(32) for i in range(64)) / 32
    assert torch.allclose(out.l1, by_hand)
    assert torch.allclose(out.loss, out.mse + 3.0 * by_hand)


# --- weights: decoder norm, normalization, b_dec init ---------------------------------------------

def test_normalize_decoder_gives_unit_rows_and_projection_removes_the_parallel_gradient():
    sae = make_sae("topk")
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae(activations()).loss.backward()
    assert (sae.W_dec.grad * sae.W_dec).sum(dim=1).abs().max() > 1e-6
    before = sae.W_dec.grad.clone()
    remove_parallel_decoder_grad_(sae)
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(dim=1), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(before, sae.W_dec.grad)
    normalize_decoder_(sae)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64, dtype=torch.float64))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_folded_sae_on_raw_activations_matches_the_trained_sae_on_scaled_ones(architecture):
    sae = make_sae(architecture).eval()
    raw = activations() * 7.0
    scale = estimate_activation_scale(raw)
    assert torch.allclose((raw * scale).norm(dim=1).mean(), torch.tensor(16.0, dtype=torch.float64) ** 0.5)
    with torch.no_grad():
        trained_latents = sae.encode(raw * scale)
        trained_recon = sae(raw * scale).recon
        fold_normalization(sae, scale)
        folded_latents = sae.encode(raw)
        folded_recon = sae(raw).recon
    assert (trained_latents != 0).sum() > 0
    assert torch.equal(trained_latents != 0, folded_latents != 0)
    assert torch.allclose(folded_latents, trained_latents / scale)
    assert torch.allclose(folded_recon, trained_recon / scale)
    assert sae.cfg.normalize_activations == "none" and sae.cfg.folded_activation_scale == pytest.approx(scale)


def test_geometric_median_resists_outliers_unlike_the_mean():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [1000.0, 0.0]])
    assert torch.allclose(geometric_median(points), torch.tensor([2.0, 0.0]), atol=1e-3)
    sae = make_sae("topk", d_in=2, b_dec_init="geometric_median")
    init_b_dec(sae, points.double())
    assert torch.allclose(sae.b_dec, torch.tensor([2.0, 0.0], dtype=torch.float64), atol=1e-3)
    sae = make_sae("topk", d_in=2, b_dec_init="mean")
    init_b_dec(sae, points.double())
    assert torch.allclose(sae.b_dec, torch.tensor([201.2, 0.0], dtype=torch.float64))


# --- config and files -----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("architecture", "transcoder"), ("d_sae", 0), ("b_dec_init", "median"),
                                          ("normalize_activations", "layer_norm"), ("jumprelu_bandwidth", 0.0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SAEConfig(**{field: value})


def test_config_rejects_k_above_d_sae():
    with pytest.raises(ValueError, match="k"):
        SAEConfig(architecture="topk", d_sae=16, k=32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_gives_equal_outputs(architecture, tmp_path):
    sae = make_sae(architecture, hook_name="blocks.1.hook_resid_post").eval()
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae_dir(tmp_path / "sae").eval()
    x = activations()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.allclose(loaded(x).recon, sae(x).recon)
    assert loaded.cfg == dataclasses.replace(sae.cfg, normalize_activations="none")  # scale 1 folded
    cfg_json = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg_json["d_sae"] == 64 and cfg_json["format_version"] == 1
    assert cfg_json["architecture"] == {"relu": "standard", "topk": "topk"}.get(architecture, "jumprelu")


def test_saved_sae_folds_the_activation_scale_and_works_on_raw_activations(tmp_path):
    sae = make_sae("topk", normalize_activations="expected_norm", activation_scale=0.25).eval()
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae_dir(tmp_path / "sae").eval()
    raw = activations() * 4
    with torch.no_grad():
        assert torch.allclose(loaded(raw).recon, sae(raw * 0.25).recon / 0.25)
    assert sae.cfg.activation_scale == 0.25  # the live SAE is left as it was
    assert loaded.cfg.normalize_activations == "none" and loaded.cfg.folded_activation_scale == 0.25


def test_cfg_json_whose_d_sae_disagrees_with_the_weights_is_an_error_naming_d_sae(tmp_path):
    save_sae(make_sae("topk"), tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json["d_sae"] = cfg_json["saekit"]["d_sae"] = 128
    cfg_path.write_text(json.dumps(cfg_json))
    with pytest.raises(ValueError, match="d_sae = 128"):
        load_sae_dir(tmp_path / "sae")


def test_loading_a_folder_without_weights_names_the_missing_file(tmp_path):
    save_sae(make_sae("relu"), tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_sae_dir(tmp_path / "sae")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sixteen_bit_topk_runs_and_agrees_with_float32(dtype):
    sae16 = build_sae(SAEConfig(d_in=16, d_sae=64, k=4, dtype=dtype))  # csr falls back to gather here
    sae32 = build_sae(SAEConfig(d_in=16, d_sae=64, k=4))
    sae32.load_inference_tensors({name: t.float() for name, t in sae16.inference_tensors().items()})
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    out = sae16(x)
    out.loss.backward()
    assert sae16.W_dec.grad is not None and sae16.W_dec.grad.abs().sum() > 0
    reference = sae32(x.float()).recon
    relative_error = (out.recon.float() - reference).pow(2).sum() / reference.pow(2).sum()
    assert relative_error < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_folder_loads_in_sae_lens_with_equal_latents_and_back(architecture, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = make_sae(architecture, hook_name="blocks.0.hook_resid_post").eval()
    save_sae(sae, tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "ours", dtype="float64")
    x = activations()
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x))
        assert torch.allclose(theirs.decode(theirs.encode(x)), sae.decode(sae.encode(x)))
    theirs.save_model(tmp_path / "theirs")
    back = load_sae_dir(tmp_path / "theirs")
    with torch.no_grad():
        assert torch.allclose(back.encode(x), sae.encode(x))
