"""saekit match: the shared-latent rule on planted data, untrained SAEs share nothing, the scalable
assignment equals the exact one (and certifies it), widths and seeds, the match directory, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from saekit.cli import main
from saekit.match import MatchConfig, exact_assignment, match_pair, match_saes, sparse_assignment
from saekit.match.assign import assignment_duals
from saekit.match.similarity import Blocks, cosine_matrix, top_candidates, unit_rows
from saekit.sae import SAEConfig, build_sae, save_sae

HOOK = "blocks.0.hook_resid_post"


def make_sae(d_in=128, d_sae=256, seed=0, hook=HOOK, architecture="topk"):
    cfg = SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, k=8, hook_name=hook, seed=seed,
                    normalize_activations="none", b_dec_init="zeros")
    return build_sae(cfg)


def planted_copy(sae, n_shared, noise=0.05, seed=1, extra=0):
    """An SAE whose first n_shared latents (at a random permutation of positions) are sae's latents
    0..n_shared-1 with independent noise on encoder and decoder; the rest (plus `extra`) fresh random.
    Returns (new SAE, positions [n_shared]: where latent i went)."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae + extra
    other = make_sae(d_in, d_sae, seed=seed + 100, hook=sae.cfg.hook_name)
    positions = torch.randperm(d_sae, generator=g)[:n_shared]
    with torch.no_grad():
        dec = sae.W_dec[:n_shared]
        enc = sae.W_enc[:, :n_shared].t()
        other.W_dec[positions] = unit_rows(dec + noise * torch.randn(dec.shape, generator=g) / d_in**0.5)
        other.W_enc[:, positions] = unit_rows(enc + noise * torch.randn(enc.shape, generator=g) / d_in**0.5).t()
    return other, positions.numpy()


def random_dirs(n, d, seed):
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


# --- the rule -------------------------------------------------------------------------------------

def test_planted_permutation_is_recovered_and_shared_fraction_equals_planted():
    a = make_sae(d_sae=400, seed=0)
    b, positions = planted_copy(a, n_shared=150)
    pair = match_pair(a, b, method="exact")
    assert (pair.a.decoder_partner[:150] == positions).all()
    assert (pair.a.encoder_partner[:150] == positions).all()
    assert pair.a.shared()[:150].all() and not pair.a.shared()[150:].any()
    assert pair.n_shared() == 150
    assert (pair.b.decoder_partner[positions] == np.arange(150)).all()  # the other side agrees


def test_untrained_saes_share_no_latents_at_threshold_07():
    a, b = make_sae(d_in=768, d_sae=1024, seed=0), make_sae(d_in=768, d_sae=1024, seed=1)
    pair = match_pair(a, b)
    assert pair.n_shared(0.7) == 0
    assert np.nanmax(pair.a.decoder_cos) < 0.3


def test_an_sae_shares_every_latent_with_itself_in_both_methods():
    a = make_sae(d_sae=300, seed=3)
    for method in ("exact", "sparse"):
        pair = match_pair(a, a, method=method, candidates=2)
        assert pair.n_shared() == 300 and (pair.a.decoder_partner == np.arange(300)).all()


def test_shared_needs_the_same_partner_in_encoder_and_decoder():
    a = make_sae(d_sae=200, seed=0)
    b, positions = planted_copy(a, n_shared=100)
    with torch.no_grad():  # latents 0 and 1: decoder kept, encoder directions swapped between them
        b.W_enc[:, [positions[0], positions[1]]] = b.W_enc[:, [positions[1], positions[0]]]
    pair = match_pair(a, b)
    shared = pair.a.shared()
    assert not shared[0] and not shared[1] and shared[2:100].all()
    assert pair.a.decoder_partner[0] == positions[0] and pair.a.encoder_partner[0] == positions[1]


# --- exact vs scalable ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_a,n_b,d,planted", [(300, 300, 48, 0), (300, 300, 48, 150), (180, 320, 32, 90),
                                               (500, 500, 768, 0)])
def test_sparse_assignment_equals_exact(n_a, n_b, d, planted):
    a = random_dirs(n_a, d, 0)
    b = random_dirs(n_b, d, 1)
    if planted:
        b[:planted] = unit_rows(a[:planted] + 0.3 * random_dirs(planted, d, 2))
    exact = exact_assignment(cosine_matrix(a, b))
    sparse = sparse_assignment(a, b, candidates=2)  # few candidates: the certificate has work to do
    assert sparse.certified
    assert sparse.info["rounds"] >= 2 or sparse.info["candidates"] > 2
    assert abs(sparse.total - exact.total) <= 1e-4 * abs(exact.total)
    assert (sparse.partner == exact.partner).mean() > 0.99
    assert np.allclose(sparse.row_max, exact.row_max, atol=1e-6)
    assert np.allclose(sparse.col_max, exact.col_max, atol=1e-6)


def test_sparse_and_exact_give_the_same_shared_fraction_on_planted_saes():
    a = make_sae(d_sae=512, seed=0)
    b, _ = planted_copy(a, n_shared=200, noise=0.6)
    exact = match_pair(a, b, method="exact")
    sparse = match_pair(a, b, method="sparse", candidates=4)
    assert sparse.decoder.certified and sparse.encoder.certified
    assert exact.n_shared() == sparse.n_shared() == 200
    for which in ("decoder", "encoder"):
        e, s = getattr(exact, which).total, getattr(sparse, which).total
        assert abs(e - s) <= 1e-4 * abs(e)


def test_duals_certify_the_optimum_on_a_full_graph():
    a, b = random_dirs(60, 16, 3), random_dirs(90, 16, 4)
    sim = cosine_matrix(a, b)
    exact = exact_assignment(sim)
    rows, cols = np.nonzero(np.ones_like(sim, dtype=bool))
    duals_a, duals_b = assignment_duals(rows, cols, sim[rows, cols], exact.partner, sim.shape[1])
    assert duals_a.sum() + duals_b.sum() == pytest.approx(exact.total, abs=1e-9)
    assert (duals_a[:, None] + duals_b[None, :] >= sim - 1e-9).all()
    assert (duals_b >= -1e-12).all()


def test_top_candidates_are_the_largest_cosines_of_rows_and_columns():
    a, b = random_dirs(70, 16, 5), random_dirs(50, 16, 6)
    sim = cosine_matrix(a, b)
    cand = top_candidates(a, b, m=5, block_rows=16)
    assert np.allclose(cand.row_values, -np.sort(-sim, axis=1)[:, :5], atol=1e-6)
    assert np.allclose(cand.col_values, -np.sort(-sim, axis=0)[:5], atol=1e-6)


# --- widths, seeds, the match directory ---------------------------------------------------------

def test_different_widths_match_the_smaller_into_the_larger_both_ways():
    a = make_sae(d_sae=128, seed=0)
    b, positions = planted_copy(a, n_shared=128, extra=128)  # b has 256 latents, a's 128 among them
    for first, second, swapped in ((a, b, False), (b, a, True)):
        pair = match_pair(first, second)
        assert pair.swapped == swapped
        small, large = (pair.b, pair.a) if swapped else (pair.a, pair.b)
        assert small.shared().all() and (small.decoder_partner == positions).all()
        assert large.shared().sum() == 128 and (large.decoder_partner >= 0).sum() == 128
        assert np.isnan(large.decoder_cos[large.decoder_partner < 0]).all()


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """SAE 0, and SAEs 1 and 2 that plant latents 0..119 and 0..79 of SAE 0 (so 80 are shared with both)."""
    root = tmp_path_factory.mktemp("match")
    a = make_sae(d_sae=256, seed=0)
    b, _ = planted_copy(a, n_shared=120, seed=1)
    c, _ = planted_copy(a, n_shared=80, seed=2)
    return [str(save_sae(sae, root / f"topk-256-seed{k}")) for k, sae in enumerate((a, b, c))], root


def test_match_directory_holds_summary_table_and_report(three_seeds):
    paths, root = three_seeds
    summary = match_saes(MatchConfig(saes=paths, out=str(root / "out"), device="cpu"), progress=False)
    saved = json.loads((root / "out" / "match.json").read_text())
    assert saved["format_version"] == 1 and saved == summary
    assert summary["pairs"]["0-1"]["n_shared"] == 120 and summary["pairs"]["0-2"]["n_shared"] == 80
    assert summary["seeds"]["matrix"][0][1] == pytest.approx(120 / 256)
    assert summary["seeds"]["reference"]["fraction_shared_with_all"] == pytest.approx(80 / 256)
    assert summary["seeds"]["reference"]["shared_with_count"] == pytest.approx([136 / 256, 40 / 256, 80 / 256])
    table = pd.read_parquet(root / "out" / "latents.parquet")
    assert len(table) == 3 * 2 * 256
    rows = table[(table.pair == "0-1") & (table.sae == 0)]
    assert rows.shared.sum() == 120 and rows.frequency.isna().all()
    assert (root / "out" / "report.html").read_text().count("plotly") > 10


def test_threshold_curve_falls_and_meets_the_fraction_at_the_threshold(three_seeds):
    paths, root = three_seeds
    summary = match_saes(MatchConfig(saes=paths[:2], out=str(root / "curve"), figures=False, table_format="csv"),
                         progress=False)
    pair = summary["pairs"]["0-1"]
    curve = pair["threshold_curve"]
    assert all(x >= y for x, y in zip(curve, curve[1:]))
    assert curve[14] == pytest.approx(pair["fraction_shared"])  # thresholds 0, 0.05, ..., index 14 = 0.7
    assert pair["checks"]["hungarian_mean_at_most_max_mean"]
    assert pair["decoder"]["mean_matched_cos"] <= pair["decoder"]["mean_max_cos"]
    assert (root / "curve" / "latents.csv").exists() and not (root / "curve" / "report.html").exists()


def test_activation_correlation_and_frequency_from_a_cache(tmp_path):
    from saekit.data import write_array_cache

    a = make_sae(d_in=32, d_sae=64, seed=0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    b = make_sae(d_in=32, d_sae=64, seed=1)
    with torch.no_grad():  # b is a with its latents permuted: identical activations, moved
        for name in ("W_dec", "b_enc"):
            getattr(b, name)[perm] = getattr(a, name)
        b.W_enc[:, perm] = a.W_enc
    acts = torch.randn(20, 16, 32, generator=torch.Generator().manual_seed(1))
    write_array_cache(tmp_path / "cache", {HOOK: acts}, contexts_per_shard=5)
    paths = [str(save_sae(sae, tmp_path / f"sae{k}")) for k, sae in enumerate((a, b))]
    scores = tmp_path / "sae0" / "autointerp_scores.json"
    scores.write_text(json.dumps({"scores": {"3": 0.9, "5": 0.4}}))
    summary = match_saes(MatchConfig(saes=paths, out=str(tmp_path / "out"), cache=str(tmp_path / "cache"),
                                     n_tokens=160, figures=False), progress=False)
    table = pd.read_parquet(tmp_path / "out" / "latents.parquet")
    side = table[table.sae == 0]
    assert (side.decoder_partner.to_numpy() == perm.numpy()).all()
    fires = side.frequency > 0
    assert fires.sum() > 10
    assert np.allclose(side.activation_corr[fires], 1.0, atol=1e-6)
    assert np.allclose(side.frequency, side.partner_frequency)
    assert side.autointerp_score.notna().sum() == 2 and side.autointerp_score[3] == 0.9
    assert table[table.sae == 1].partner_autointerp_score.notna().sum() == 2
    assert summary["pairs"]["0-1"]["activation_corr"]["shared"] == pytest.approx(1.0, abs=1e-6)


# --- bad input and the CLI -----------------------------------------------------------------------

def test_different_d_in_is_an_error_naming_both_folders(tmp_path):
    a = save_sae(make_sae(d_in=64), tmp_path / "a")
    b = save_sae(make_sae(d_in=128), tmp_path / "b")
    with pytest.raises(ValueError, match=r"different d_in.*a has d_in 64.*b has d_in 128"):
        match_saes(MatchConfig(saes=[str(a), str(b)], out=str(tmp_path / "out")), progress=False)
    with pytest.raises(ValueError, match="different d_in"):
        match_pair(make_sae(d_in=64), make_sae(d_in=128))


def test_different_hook_points_fail_unless_forced(tmp_path):
    a = save_sae(make_sae(hook="blocks.0.hook_resid_post"), tmp_path / "a")
    b = save_sae(make_sae(hook="blocks.1.hook_resid_post", seed=1), tmp_path / "b")
    config = MatchConfig(saes=[str(a), str(b)], out=str(tmp_path / "out"), figures=False)
    with pytest.raises(ValueError, match="different hook points.*blocks.1.hook_resid_post.*force"):
        match_saes(config, progress=False)
    config.force = True
    with pytest.warns(UserWarning, match="different hook points"):
        assert match_saes(config, progress=False)["pairs"]["0-1"]["n_shared"] == 0


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="MatchConfig.method"):
        MatchConfig(method="greedy")
    with pytest.raises(ValueError, match="MatchConfig.scores"):
        MatchConfig(saes=["a", "b"], scores=["x"])


def test_cli_match_prints_the_shared_fraction(three_seeds, capsys):
    paths, root = three_seeds
    assert main(["match", *paths[:2], "--out", str(root / "cli"), "--threshold", "0.5", "--figures", "false"]) == 0
    printed = capsys.readouterr().out
    assert "120 latents shared at cosine >= 0.5" in printed
    assert json.loads((root / "cli" / "match.json").read_text())["config"]["threshold"] == 0.5
    assert main(["match", paths[0], "--out", str(root / "cli1")]) == 2  # one SAE: a clear error


def test_frequencies_come_from_eval_json_without_a_cache(three_seeds):
    paths, root = three_seeds
    frequency = np.linspace(0, 0.5, 256)
    (root / "topk-256-seed0" / "eval.json").write_text(json.dumps({"latent_frequency": frequency.tolist()}))
    try:
        summary = match_saes(MatchConfig(saes=paths[:2], out=str(root / "freq"), figures=False), progress=False)
    finally:
        (root / "topk-256-seed0" / "eval.json").unlink()
    table = pd.read_parquet(root / "freq" / "latents.parquet")
    side = table[table.sae == 0]
    assert np.allclose(side.frequency, frequency) and table[table.sae == 1].frequency.isna().all()
    shared = side.shared.to_numpy()
    expected = np.log10(frequency[shared & (frequency > 0)]).mean()  # never-active latents left out
    assert summary["pairs"]["0-1"]["mean_log10_frequency"]["shared"] == pytest.approx(expected)


# --- the bounded-memory matcher at a few hundred to ~2K latents ------------------------------------

def near_tie_dirs(n_a, n_b, d, cluster, seed):
    """B in clusters of `cluster` near-duplicates (cosine ~0.99); A's rows drawn from the same clusters,
    so every row has ~cluster candidates within ~0.01 of its best (the hard case for the certificate)."""
    g = torch.Generator().manual_seed(seed)
    centers = unit_rows(torch.randn(max(1, n_b // cluster), d, generator=g))
    b = unit_rows(centers[torch.arange(n_b) % len(centers)] + 0.1 * torch.randn(n_b, d, generator=g) / d**0.5)
    which = torch.randint(len(centers), (n_a,), generator=g)
    a = unit_rows(centers[which] + 0.1 * torch.randn(n_a, d, generator=g) / d**0.5)
    return a, b


@pytest.mark.parametrize("case,n_a,n_b", [("random", 1536, 1536), ("planted", 1500, 1500), ("near_tie", 800, 800),
                                          ("near_tie", 600, 1000), ("random", 700, 1200)])
def test_streamed_matcher_equals_linear_sum_assignment(case, n_a, n_b):
    """Small blocks (at most 20,000 cosines) and few candidates: the certificate has to recompute rows
    and repair the matching, and the answer must still be scipy's on the dense matrix."""
    d = 64
    if case == "near_tie":
        a, b = near_tie_dirs(n_a, n_b, d, cluster=24, seed=7)
    else:
        a, b = random_dirs(n_a, d, 0), random_dirs(n_b, d, 1)
        if case == "planted":
            b[: n_a // 2] = unit_rows(a[: n_a // 2] + 0.5 * random_dirs(n_a // 2, d, 2))
    exact = exact_assignment(cosine_matrix(a, b))
    blocks = Blocks(rows=4096, elements=20_000)
    sparse = sparse_assignment(a, b, candidates=4, block_rows=blocks)
    assert sparse.certified
    assert abs(sparse.total - exact.total) <= n_a * 1e-6 + 1e-5
    agree = (sparse.partner == exact.partner).mean()
    assert agree == 1.0 if case != "near_tie" else agree > 0.99
    assert len(np.unique(sparse.partner)) == n_a
    assert 0 < sparse.info["largest_block"] <= 20_000
