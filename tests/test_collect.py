"""saekit collect: the streaming records equal a brute-force computation over every activation,
quantile examples sit in their bins, negatives never activate, and records round-trip through disk."""

import json

import numpy as np
import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import CacheConfig, cache_activations, read_manifest
from saekit.interp.records.collect import CollectConfig, TopKeys, collect_records, quantile_split
from saekit.interp.records.format import load_records
from saekit.sae import SAEConfig, build_sae, save_sae

HOOK = "blocks.1.hook_resid_post"
N_CONTEXTS, CTX, D_SAE = 48, 32, 96


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_local_model_dir(tmp_path_factory.mktemp("collect"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[HOOK], n_tokens=N_CONTEXTS * CTX, ctx_len=CTX, shard_tokens=CTX * 10,
                                  device="cpu"), progress=False)
    sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=D_SAE, hook_name=HOOK, seed=3,
                              normalize_activations="none"))
    with torch.no_grad():  # latents of very different frequencies, a few never firing
        sae.b_enc.copy_(torch.linspace(-4.0, 0.5, D_SAE))
    folder = save_sae(sae, root / "sae")
    config = CollectConfig(sae=str(folder), cache=str(cache), n_tokens=0, n_top=5, n_explain=8, n_test=10,
                           n_quantiles=4, reservoir=10_000, n_random_negatives=6, n_hard_negatives=4,
                           window=12, tokens_after=3, batch_tokens=7 * CTX, latent_chunk=40, device="cpu")
    out = collect_records(config, progress=False)
    return root, cache, sae, config, out


def brute_force(cache, sae):
    """(tokens [n, ctx], latents [n, ctx, d_sae] with BOS zeroed) over the whole cache."""
    from saekit.interp.records.collect import ContextReader

    manifest = read_manifest(cache)
    reader = ContextReader(cache, manifest, HOOK)
    contexts = np.arange(manifest["n_contexts"])
    with torch.no_grad():
        latents = sae.encode(reader.acts(contexts)).view(len(contexts), CTX, -1)
    latents[:, 0] = 0
    return reader.tokens(contexts), latents


def test_statistics_equal_a_brute_force_computation(setup):
    root, cache, sae, config, out = setup
    records = load_records(out)
    _, latents = brute_force(cache, sae)
    body = latents[:, 1:].reshape(-1, D_SAE)
    assert records.meta["n_tokens"] == body.shape[0] == N_CONTEXTS * (CTX - 1)
    table = records.table
    np.testing.assert_allclose(table["frequency"], (body > 0).float().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(table["max_activation"], body.max(0).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(table["mean_activation"], body.double().mean(0).numpy(), rtol=1e-4, atol=1e-7)
    assert table["n_active_contexts"].tolist() == (latents.amax(1) > 0).sum(0).tolist()
    assert 0 < (table["frequency"] == 0).sum() < D_SAE  # some dead latents, some alive


def test_top_contexts_are_exactly_the_strongest(setup):
    root, cache, sae, config, out = setup
    records = load_records(out)
    tokens, latents = brute_force(cache, sae)
    ctx_max = latents.amax(1)  # [n, d_sae]
    for latent in range(D_SAE):
        top = records.examples(latent, "top")
        firing = int((ctx_max[:, latent] > 0).sum())
        assert len(top) == min(config.n_top, firing)
        ranked = torch.sort(ctx_max[:, latent], descending=True, stable=True).indices  # ties: earlier context
        expected = ranked[:len(top)].tolist()
        assert [e.context for e in top] == expected
        for e in top:
            assert e.value == pytest.approx(float(ctx_max[e.context, latent]), rel=1e-5)
            assert int(latents[e.context, :, latent].argmax()) == e.anchor
            np.testing.assert_array_equal(e.tokens, tokens[e.context, e.start:e.start + 12])
            np.testing.assert_allclose(e.acts, latents[e.context, e.start:e.start + 12, latent].numpy(), rtol=1e-5,
                                       atol=1e-6)
            assert e.max_act == pytest.approx(e.value, rel=1e-5)  # the max token is inside the window
            assert 1 <= e.start and e.start + 12 <= CTX and 0 <= e.anchor_in_window <= 12 - 1


def window_maxima(latents, window=12):
    """(starts [w], maxima [n, w, d_sae]) of the scan's fixed windows, brute force."""
    from saekit.interp.records.scan import window_starts

    starts = window_starts(CTX, 1, window)
    return starts, torch.stack([latents[:, s:s + window].amax(1) for s in starts], 1)


def test_window_starts_cover_every_position_once_or_twice():
    from saekit.interp.records.scan import window_starts

    assert window_starts(32, 1, 12).tolist() == [1, 13, 20]  # the last block shifted back to end at 32
    assert window_starts(129, 1, 32).tolist() == [1, 33, 65, 97]
    assert window_starts(10, 1, 32).tolist() == [1]  # a window wider than the context is clipped


def test_quantile_examples_are_windows_in_their_bins(setup):
    root, cache, sae, config, out = setup
    records = load_records(out)
    _, latents = brute_force(cache, sae)
    starts, win_max = window_maxima(latents)
    checked = 0
    for latent in range(D_SAE):
        values = np.sort(win_max[..., latent][win_max[..., latent] > 0].numpy())[::-1]  # every activating window
        assert records.stats(latent)["n_active_windows"] == len(values)
        if len(values) < 2 * config.n_quantiles:
            continue
        bins = np.array_split(values, config.n_quantiles)  # the reservoir holds them all: exact quantiles
        explain, test = records.examples(latent, "explain"), records.examples(latent, "test")
        keys = [(e.context, e.start) for e in explain + test]
        assert len(set(keys)) == len(keys)  # no window twice
        for e in explain + test:
            assert e.start in starts and len(e.tokens) == 12
            assert bins[e.quantile].min() - 1e-5 <= e.value <= bins[e.quantile].max() + 1e-5
            w = list(starts).index(e.start)
            assert e.value == pytest.approx(float(win_max[e.context, w, latent]), rel=1e-5)
            assert e.max_act == pytest.approx(e.value, rel=1e-5)  # the value is the window's own max
        want = min(len(values), config.n_explain + config.n_test)
        assert len(explain) + len(test) == want
        assert sorted({e.quantile for e in explain}) == list(range(config.n_quantiles))
        checked += 1
    assert checked >= 5


def test_negatives_never_activate_and_hard_ones_hold_a_top_token(setup):
    root, cache, sae, config, out = setup
    records = load_records(out)
    tokens, latents = brute_force(cache, sae)
    n_hard = 0
    for latent in range(D_SAE):
        top_ids = set(records.stats(latent)["top_token_ids"])
        for e in records.examples(latent, "random"):
            assert float(latents[e.context, e.start:e.start + 12, latent].max()) == 0.0
            assert not e.acts.any() and e.start <= e.anchor < e.start + 12
        for e in records.examples(latent, "hard"):
            assert float(latents[e.context, :, latent].max()) == 0.0
            assert top_ids & set(tokens[e.context, 1:].tolist())
            assert tokens[e.context, e.anchor] in top_ids
            n_hard += 1
        randoms = records.examples(latent, "random")
        assert len({(e.context, e.start) for e in randoms}) == len(randoms)
    assert n_hard > 0


def test_latents_firing_in_every_context_still_get_silent_windows(setup):
    """Negatives are silent windows, as in delphi: a latent that fires somewhere in every context
    (which had no silent context, so no negatives at all) gets the negatives asked for."""
    root, cache, sae, config, out = setup
    records = load_records(out)
    _, latents = brute_force(cache, sae)
    _, win_max = window_maxima(latents)
    dense = [j for j in range(D_SAE) if bool((latents[..., j].amax(1) > 0).all())
             and int((win_max[..., j] == 0).sum()) >= config.n_random_negatives]
    assert dense, "the fixture should hold latents firing in every context with silent windows"
    for j in dense:
        assert records.stats(j)["n_random"] == config.n_random_negatives
        assert records.stats(j)["n_silent_windows"] == int((win_max[..., j] == 0).sum())


def test_records_round_trip_and_meta(setup):
    root, cache, sae, config, out = setup
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "saekit-latent-records" and meta["n_chunks"] == 3  # 96 latents, 40 per file
    assert meta["config"]["n_top"] == 5 and meta["window"] == 12
    records = load_records(out)
    assert records.latents == list(range(D_SAE))
    stats = records.stats(95)
    assert set(stats) >= {"frequency", "mean_activation", "max_activation", "n_top", "top_token_ids"}
    with pytest.raises(KeyError, match="latent 500"):
        records.examples(500, "top")


def test_a_subset_of_latents_gives_the_same_records(setup, tmp_path):
    root, cache, sae, config, out = setup
    from dataclasses import replace

    subset = replace(config, latents=[90, 3, 77], out=str(tmp_path / "sub"))
    records, full = load_records(collect_records(subset, progress=False)), load_records(out)
    assert records.latents == [90, 3, 77]
    for latent in (90, 3, 77):
        assert [e.context for e in records.examples(latent, "top")] == [e.context for e in full.examples(latent, "top")]
        assert records.stats(latent)["frequency"] == full.stats(latent)["frequency"]


def test_topkeys_merge_equals_a_global_topk():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(700, 7, generator=g).round(decimals=1)  # ties, and several merges of 256+ rows
    expected = torch.sort(keys, dim=0, descending=True).values[:6]
    for stable in (False, True):
        heap = TopKeys(6, 7, torch.device("cpu"), {"row": torch.int64}, stable=stable)
        for start in range(0, 700, 8):
            heap.push(keys[start:start + 8], row=torch.arange(start, min(700, start + 8))[:, None])
        found = heap.numpy()  # latent-major [7, 6], best first
        np.testing.assert_allclose(found["key"], expected.T.numpy())
        rows_hold_their_keys = torch.gather(keys.T, 1, torch.from_numpy(found["row"])).numpy() == found["key"]
        assert rows_hold_their_keys.all()
        if stable:  # among equal keys the earliest row wins, as a stable sort of all rows would have it
            ranked = torch.sort(keys, dim=0, descending=True, stable=True).indices[:6].T.numpy()
            np.testing.assert_array_equal(found["row"], ranked)


def test_quantile_split_is_delphis_equal_slices():
    values = np.arange(100, dtype=np.float32)[::-1].copy()
    explain, test = quantile_split(values, 10, 40, 50, np.random.default_rng(0))
    assert len(explain) == 40 and len(test) == 50
    for index, q in explain + test:
        assert 99 - 10 * q >= values[index] >= 90 - 10 * q  # quantile 0 holds the strongest tenth
    assert not {i for i, _ in explain} & {i for i, _ in test}


def test_live_mode_caches_the_model_first(setup, tmp_path):
    root, cache, sae, config, out = setup
    from dataclasses import replace

    live = replace(config, cache="", model=str(root / "model"), dataset=str(root / "data.jsonl"), n_tokens=640,
                   n_latents=8, out=str(tmp_path / "live"))
    records = load_records(collect_records(live, progress=False))
    assert (tmp_path / "live" / "cache" / "manifest.json").exists()
    assert records.meta["n_tokens"] == 10 * 63 and records.latents == list(range(8))
    with pytest.raises(ValueError, match="--model"):
        collect_records(replace(config, cache="", out=str(tmp_path / "none")), progress=False)
