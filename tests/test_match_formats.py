"""saekit match reads whatever load_sae reads: two sparsify seed folders (cfg.json + sae.safetensors, no
hook name, as sparsify's SparseCoder.save_to_disk writes them) give the same shared fraction as their
SAELens exports and as a direct Hungarian matching of their weights; hook names come from the SAEs'
configs or --hookpoint, never from folder names."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.optimize import linear_sum_assignment

from saekit.cli import main
from saekit.match import DEFAULT_THRESHOLD, MatchConfig, match_saes
from saekit.sae.formats import export_sae

D_IN, D_SAE, K, N_PLANTED = 32, 128, 8, 48


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def seed_weights():
    """Two seeds' (encoder.weight [d_sae, d_in], W_dec [d_sae, d_in]): B holds N_PLANTED of A's
    latents, permuted, with noise of growing size (so some stay above 0.7 and some fall below)."""
    g = torch.Generator().manual_seed(0)
    enc_a, dec_a = unit(torch.randn(D_SAE, D_IN, generator=g)), unit(torch.randn(D_SAE, D_IN, generator=g))
    enc_b, dec_b = unit(torch.randn(D_SAE, D_IN, generator=g)), unit(torch.randn(D_SAE, D_IN, generator=g))
    where = torch.randperm(D_SAE, generator=g)[:N_PLANTED]
    noise = torch.linspace(0.1, 1.5, N_PLANTED)[:, None]
    enc_b[where] = unit(enc_a[:N_PLANTED] + noise * unit(torch.randn(N_PLANTED, D_IN, generator=g)))
    dec_b[where] = unit(dec_a[:N_PLANTED] + noise * unit(torch.randn(N_PLANTED, D_IN, generator=g)))
    return (enc_a, dec_a), (enc_b, dec_b)


def write_sparsify(folder, enc, dec, **cfg_extra):
    """A folder in sparsify's layout: cfg.json (SparseCoderConfig fields + d_in) and sae.safetensors."""
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": D_SAE // D_IN, "normalize_decoder": True,
           "num_latents": D_SAE, "k": K, "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": D_IN, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"encoder.weight": enc.contiguous(), "encoder.bias": torch.zeros(D_SAE),
               "W_dec": dec.contiguous(), "b_dec": torch.zeros(D_IN)}, str(folder / "sae.safetensors"))
    return folder


@pytest.fixture
def seeds(tmp_path):
    (enc_a, dec_a), (enc_b, dec_b) = seed_weights()
    a = write_sparsify(tmp_path / "run-a" / "seed0", enc_a, dec_a)
    b = write_sparsify(tmp_path / "run-b" / "seed1", enc_b, dec_b)
    return a, b, (enc_a, dec_a, enc_b, dec_b)


def direct_shared(enc_a, dec_a, enc_b, dec_b, threshold=DEFAULT_THRESHOLD):
    """saekit's rule computed from scratch: one max-total assignment on decoder cosines, one on encoder
    cosines; shared = same partner and both matched cosines >= threshold."""
    def matched(x, y):
        cos = (unit(x) @ unit(y).t()).double().numpy()
        rows, cols = linear_sum_assignment(cos, maximize=True)
        return cols[np.argsort(rows)], cos[rows, cols][np.argsort(rows)]
    p_dec, c_dec = matched(dec_a, dec_b)
    p_enc, c_enc = matched(enc_a, enc_b)
    return int(((p_dec == p_enc) & (c_dec >= threshold) & (c_enc >= threshold)).sum())


def run_cli(a, b, out, *extra):
    assert main(["match", str(a), str(b), "--out", str(out), "--figures", "false", "--device", "cpu", *extra]) == 0
    return json.loads((out / "match.json").read_text())


def test_sparsify_seeds_match_like_their_saelens_exports_and_a_direct_computation(seeds, tmp_path, capsys):
    a, b, weights = seeds
    expected = direct_shared(*weights)
    assert 0 < expected < N_PLANTED  # the planted noise leaves some planted latents unshared

    summary = run_cli(a, b, tmp_path / "out")
    printed = capsys.readouterr().out
    pair = summary["pairs"]["0-1"]
    assert pair["n_shared"] == expected
    assert pair["fraction_shared"] == pytest.approx(expected / D_SAE)
    assert f"{expected} latents shared at cosine >= {DEFAULT_THRESHOLD}" in printed
    assert f"fraction {expected / D_SAE:.3f}" in printed
    assert "hook points not compared" in printed and summary["hook_check"]["compared"] is False
    assert [s["hook_name"] for s in summary["saes"]] == [None, None]

    exported = [export_sae(folder, "saelens", tmp_path / f"saelens-{folder.name}") for folder in (a, b)]
    from_saelens = run_cli(*exported, tmp_path / "out-saelens")
    assert from_saelens["pairs"]["0-1"]["n_shared"] == expected
    assert from_saelens["pairs"]["0-1"]["fraction_shared"] == pair["fraction_shared"]


def test_hookpoint_names_the_hook_of_sparsify_folders_without_one(seeds, tmp_path, capsys):
    a, b, _ = seeds
    summary = run_cli(a, b, tmp_path / "out", "--hookpoint", "layers.3")
    assert [s["hook_name"] for s in summary["saes"]] == ["blocks.3.hook_resid_post"] * 2
    assert summary["hook_check"]["compared"] is True
    assert "not compared" not in capsys.readouterr().out


def test_folder_names_are_never_hook_names(tmp_path):
    (enc_a, dec_a), (enc_b, dec_b) = seed_weights()
    # folders named like two different modules: matched, since neither config names a hook
    a = write_sparsify(tmp_path / "x" / "layers.0", enc_a, dec_a)
    b = write_sparsify(tmp_path / "y" / "layers.1", enc_b, dec_b)
    summary = match_saes(MatchConfig(saes=[str(a), str(b)], out=str(tmp_path / "out"), figures=False,
                                     device="cpu"), progress=False)
    assert summary["hook_check"]["compared"] is False
    assert summary["pairs"]["0-1"]["n_shared"] == direct_shared(enc_a, dec_a, enc_b, dec_b)


def test_declared_hook_names_are_still_compared(tmp_path):
    (enc_a, dec_a), (enc_b, dec_b) = seed_weights()
    a = write_sparsify(tmp_path / "a", enc_a, dec_a, hook_name="blocks.0.hook_resid_post")
    b = write_sparsify(tmp_path / "b", enc_b, dec_b, hook_name="blocks.1.hook_resid_post")
    config = MatchConfig(saes=[str(a), str(b)], out=str(tmp_path / "out"), figures=False, device="cpu")
    with pytest.raises(ValueError, match="different hook points.*blocks.1.hook_resid_post"):
        match_saes(config, progress=False)
    config.hookpoint = "blocks.0.hook_resid_post"  # disagrees with b's own
    with pytest.raises(ValueError, match="declares hook 'blocks.1.hook_resid_post'"):
        match_saes(config, progress=False)
