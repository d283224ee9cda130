"""k-sparse probing on a planted 1-sparse task, the task construction, and `saekit eval --metrics`
end to end on the tiny local model (resumable, eval.json sections, CLI flag)."""

import json

import numpy as np
import pytest
import torch

from conftest import make_local_model_dir
from saekit.eval.probing import (SparseProbingConfig, _fit_accuracy, binary_tasks, probe_task,
                                 sparse_probing_figure, sparse_probing_from_examples, top_k_mean_diff)


def planted_task(n=400, d_sae=200, d=32, latent=17, seed=0):
    """Labels y; SAE latents z: sparse exponential noise, except `latent` = y (+ small noise), which
    alone separates the classes; model activations x: noise (carry nothing)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n // 2)]).astype(np.int64)
    z = rng.exponential(size=(n, d_sae)) * (rng.random((n, d_sae)) < 0.1)
    z[:, latent] = y * (1 + 0.1 * rng.random(n))
    x = rng.normal(size=(n, d))
    return x, z, y


def test_planted_one_sparse_task_is_solved_by_k_1():
    x, z, y = planted_task()
    train, test = slice(0, 300), slice(300, None)
    out = probe_task(x[train], z[train], y[train], x[test], z[test], y[test], ks=[1, 2, 5])
    assert out["sae_top_1_latents"] == [17]
    assert out["sae_top_1_test_accuracy"] == 1.0
    assert out["sae_top_5_test_accuracy"] > 0.97 and out["sae_test_accuracy"] > 0.9
    assert out["llm_test_accuracy"] < 0.7  # the activations carry no label here
    random_latent = _fit_accuracy(z[train][:, [3]], y[train], z[test][:, [3]], y[test])
    assert random_latent < 0.7


def test_top_k_mean_diff_ranks_by_absolute_difference():
    features = np.array([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [2.0, 0.0, 1.0], [2.0, 0.0, 1.0]])
    labels = np.array([1, 1, 0, 0])
    assert top_k_mean_diff(features, labels, 2).tolist() == [1, 0]


def test_binary_tasks_balance_classes_and_keep_splits():
    rng = np.random.default_rng(0)
    label = np.r_[np.zeros(100), np.ones(60), np.full(40, 2)].astype(np.int64)
    split = (rng.random(200) < 0.75).astype(np.int64)
    tasks = binary_tasks("doc_source", {"label": label, "split": split}, cap=1000, rng=rng)
    assert sorted(tasks) == ["doc_source/linux-doc-6.1", "doc_source/python3.11-doc", "doc_source/stdlib-docstrings"]
    i_train, y_train, i_test, y_test = tasks["doc_source/stdlib-docstrings"]
    assert (split[i_train] == 1).all() and (split[i_test] == 0).all()
    assert y_train.sum() * 2 == len(y_train) and y_test.sum() * 2 == len(y_test)
    assert (label[i_train][y_train == 1] == 0).all() and set(label[i_train][y_train == 0]) == {1, 2}
    code = binary_tasks("code_vs_prose", {"label": (label == 1).astype(np.int64), "split": split}, cap=10, rng=rng)
    _, y_train, _, y_test = code["code_vs_prose/code"]
    assert len(y_train) == 20 and y_train.sum() == 10


def test_section_schema_and_figure():
    x, z, y = planted_task(n=200)
    split = np.r_[np.ones(150), np.zeros(50)].astype(np.int64)
    config = SparseProbingConfig(ks=[1, 2])
    section = sparse_probing_from_examples({"token_case": {"x": x, "z": z, "label": y, "split": split}}, config)
    assert set(section["eval_result_metrics"]["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy",
                                                          "sae_top_2_test_accuracy"}
    assert set(section["eval_result_metrics"]["llm"]) == {"llm_test_accuracy", "llm_top_1_test_accuracy",
                                                          "llm_top_2_test_accuracy"}
    assert section["eval_result_details"][0]["dataset_name"] == "token_case"
    assert section["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] == 1.0
    sparse_probing_figure(section)


def write_fake_debian_docs(root):
    prose = "This Paragraph explains How the Driver handles The {} requests In some Detail.\n"
    for source, word in (("python3.11-doc", "python"), ("linux-doc-6.1", "kernel")):
        folder = root / source
        folder.mkdir(parents=True)
        for i in range(12):
            text = (f"Title {i}\n========\n\n" + prose.format(word) * 2 + "For example::\n\n"
                    + "".join(f"    value_{j} = call({j}, {i})\n" for j in range(4)) + "\n" + prose.format(word))
            (folder / f"{i:05d}.txt").write_text(text)
    return root


@pytest.fixture(scope="module")
def local_setup(tmp_path_factory):
    from saekit.data import CacheConfig, cache_activations

    root = make_local_model_dir(tmp_path_factory.mktemp("probing"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=["blocks.1.hook_resid_post"], n_tokens=16 * 32, ctx_len=32,
                                  shard_tokens=32 * 16, device="cpu"), progress=False)
    return root, cache, write_fake_debian_docs(root / "debian-docs")


def test_eval_metrics_end_to_end_and_resumable(local_setup, tmp_path, monkeypatch):
    from saekit.eval import EvalConfig, evaluate
    from saekit.eval import extra
    from saekit.sae import SAEConfig, build_sae, save_sae

    root, cache, docs = local_setup
    sae = build_sae(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8, hook_name="blocks.1.hook_resid_post",
                              normalize_activations="none"))
    folder = save_sae(sae, tmp_path / "sae")
    metrics = ["core", "absorption:icl_examples=1,words_per_prompt=1,min_letters=1,n_words=0",
               f"sparse_probing:datasets=code_vs_prose|token_case,n_contexts=8,ctx_len=64,ks=1|2,debian_docs={docs}"]
    result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=4 * 32, ce_contexts=2, metrics=metrics),
                      progress=False)
    assert {"fvu", "ce_loss_score", "absorption", "sparse_probing"} <= set(result)
    written = json.loads((folder / "eval.json").read_text())
    assert written["absorption"]["eval_type_id"] == "absorption_first_letter"
    assert {d["dataset_name"] for d in written["sparse_probing"]["eval_result_details"]} == {"code_vs_prose",
                                                                                            "token_case"}
    assert (folder / "eval_metrics.json").exists() and (folder / "eval_sparse_probing.html").exists()
    assert written["absorption"]["n_train_words"] + written["absorption"]["n_test_words"] >= 10

    def refuse(*args, **kwargs):
        raise AssertionError("a finished metric ran again")
    monkeypatch.setitem(extra.EXTRA_METRICS, "absorption", (extra.AbsorptionConfig, refuse, lambda s: None))
    monkeypatch.setitem(extra.EXTRA_METRICS, "sparse_probing", (extra.SparseProbingConfig, refuse, lambda s: None))
    again = evaluate(EvalConfig(sae=str(folder), cache=str(cache), metrics=metrics[1:]), progress=False)
    assert again["fvu"] == written["fvu"] and again["absorption"] == written["absorption"]
    changed = [metrics[1].replace("words_per_prompt=1", "words_per_prompt=2")]
    with pytest.raises(AssertionError, match="ran again"):
        evaluate(EvalConfig(sae=str(folder), cache=str(cache), metrics=changed), progress=False)


def test_cli_metrics_flag_and_unknown_metric():
    from saekit.cli import build_parser
    from saekit.eval.extra import parse_metric

    args = build_parser().parse_args(["eval", "SAE", "--cache", "C", "--metrics", "core", "absorption",
                                      "sparse_probing:ks=1|5"])
    assert args.metrics == ["core", "absorption", "sparse_probing:ks=1|5"]
    assert parse_metric("sparse_probing:ks=1|5,n_contexts=9") == ("sparse_probing", {"ks": [1, 5], "n_contexts": 9})
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("absorbtion")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_metric("absorption:n_wrods=3")
