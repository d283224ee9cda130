"""Write the exploration notebooks (without outputs) from the cells below: edit here, then run

    .venv/bin/python notebooks/make_notebooks.py

tests/test_notebooks.py checks that the .ipynb files are what this script writes, that they hold no
outputs, and runs each one top to bottom.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETTINGS = '''import os
from pathlib import Path

import pandas as pd

# The model: "tiny" is saekit's offline tiny LM (trained once into ~/.cache/saekit if it is not
# there yet: a few minutes); any model folder or TransformerLens name works. CI points these
# variables at a small local model so that the notebook runs in seconds.
MODEL = os.environ.get("SAEKIT_NOTEBOOK_MODEL", "tiny")
DATASET = os.environ.get("SAEKIT_NOTEBOOK_DATASET", "stdlib-docstrings")
HOOK = "blocks.1.hook_resid_post"
DEVICE = "auto"
OUT = Path("{out}")
'''

MODEL_SOURCE = '''from saekit.models import ensure_tiny_lm

source = str(ensure_tiny_lm()) if MODEL == "tiny" else MODEL
print("model:", source)'''

CACHE = '''from saekit.data import CacheConfig, cache_activations

cache = OUT / "cache"
manifest = cache_activations(CacheConfig(out=str(cache), model=source, hooks=[HOOK], dataset=DATASET,
                                         n_tokens=60_000, device=DEVICE), progress=False)
print(f"{manifest['n_tokens']:,} tokens cached at {HOOK} (d_in {manifest['hooks'][HOOK]}) in "
      f"{manifest['n_shards']} shards: {cache}")'''


def train_and_match() -> list:
    return [
        new_markdown_cell(
            "# 01 · Train two seeds and match them\n\n"
            "Cache a small model's residual stream, train two TopK SAEs that differ only in their seed (same "
            "data, same order), evaluate them, and measure how many latents they share (Paulo & Belrose, "
            "*Sparse autoencoders trained on the same data learn different features*, 2025). Everything runs "
            "offline on a CPU in about a minute; rerunning reuses what is already on disk."),
        new_code_cell(SETTINGS.format(out="runs/notebook-01") + "\n" + MODEL_SOURCE),
        new_markdown_cell(
            "## 1. Cache activations\n\n"
            "`cache_activations` runs the model over the dataset and writes the hook point's activations to "
            "safetensors shards, with a manifest (model, init variant, dataset fingerprint). A complete cache "
            "is reused; a killed one resumes."),
        new_code_cell(CACHE),
        new_markdown_cell(
            "## 2. Train two seeds in one pass\n\n"
            "`train` trains the grid `d_sae x k x seeds` in one pass over the cache: every SAE sees the same "
            "batches in the same order, so the seed is the only difference between the two. The last 5% of "
            "the cache's contexts are held out for evaluation."),
        new_code_cell(
            '''from saekit.train import TrainConfig, train

saes = train(TrainConfig(cache=str(cache), out=str(OUT / "sae"), hooks=[HOOK], architecture="topk", d_sae=[256],
                         k=[8], seeds=[0, 1], n_tokens=200_000, batch_size=512, warmup_steps=20,
                         dead_tokens=50_000, checkpoint_every=0, device=DEVICE), progress=False)
[str(folder) for folder in saes]'''),
        new_markdown_cell(
            "## 3. Evaluate on the held-out tokens\n\n"
            "FVU (fraction of variance unexplained), L0 (active latents per token), dead latents, and the "
            "cross-entropy loss recovered when the SAE's reconstruction replaces the activations in the model."),
        new_code_cell(
            '''from saekit.eval import EvalConfig, evaluate

results = {folder.name: evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=3_000, ce_contexts=16,
                                            device=DEVICE), progress=False) for folder in saes}
pd.DataFrame(results).T[["fvu", "l0", "dead_fraction", "ce_loss_score"]]'''),
        new_markdown_cell("The training curves, from each SAE's `training_log.jsonl` (plotly, drawn inline):"),
        new_code_cell(
            '''import json

from saekit.viz import training_curves_figure

logs = {f.name: [json.loads(line) for line in (f / "training_log.jsonl").read_text().splitlines()] for f in saes}
training_curves_figure(logs, keys=["fvu", "dead_fraction"]).show()'''),
        new_markdown_cell(
            "## 4. Match the two seeds\n\n"
            "Each latent's decoder direction is assigned one-to-one to the other seed's (Hungarian "
            "assignment on cosines), and separately its encoder direction; a latent is *shared* when both "
            "assignments pick the same partner with cosines >= 0.7. With the cache, `match_saes` also "
            "measures each latent's activation frequency and how well matched latents' activations correlate."),
        new_code_cell(
            '''from saekit.match import MatchConfig, match_saes, summary_lines

match_dir = OUT / "match"
summary = match_saes(MatchConfig(saes=[str(f) for f in saes], out=str(match_dir), cache=str(cache),
                                 n_tokens=3_000, device=DEVICE), progress=False)
print("\\n".join(summary_lines(summary)))'''),
        new_markdown_cell("The matched cosines, and the fraction shared as the threshold moves:"),
        new_code_cell(
            '''from saekit.match.report import matched_cosine_figure, threshold_curve_figure

matched_cosine_figure(summary).show()
threshold_curve_figure({"seed 0 vs seed 1": summary}).show()'''),
        new_markdown_cell(
            "On the trained tiny LM few or no latents reach 0.7: its residual stream is nearly rank 10 and "
            "its seeds share almost nothing at that threshold (the README's seed-sharing section), while the "
            "threshold-free mean matched cosine still moves with width, k and training length. `make demo` "
            "sets it beside a randomly initialised copy of the model."),
        new_markdown_cell(
            "## 5. Latent by latent\n\n"
            "`latents.parquet` holds one row per (pair, side, latent): its partner, both cosines, the shared "
            "flag, activation frequency and correlation. Here seed 0's side, decoder against encoder cosine:"),
        new_code_cell(
            '''import plotly.graph_objects as go

table = pd.read_parquet(match_dir / "latents.parquet")
seed0 = table[table["sae"] == 0]
fig = go.Figure(go.Scatter(x=seed0["decoder_cos"], y=seed0["encoder_cos"], mode="markers", text=seed0["latent"],
                           marker=dict(color=seed0["shared"].astype(int), colorscale=[[0, "#c92a2a"], [1, "#2b8a3e"]],
                                       size=6)))
fig.update_layout(title="Seed 0's latents: cosine with their partner in seed 1 (green = shared)",
                  xaxis_title="decoder cosine", yaxis_title="encoder cosine", height=450)
fig.show()
seed0.sort_values("decoder_cos", ascending=False)[["latent", "decoder_partner", "decoder_cos", "encoder_cos",
                                                   "shared", "activation_corr", "frequency"]].head(8)'''),
        new_markdown_cell(
            "## 6. The report\n\n"
            "`write_report` puts everything the run directory holds into one offline HTML file (training curves, "
            "frequencies, the matching figures). Notebook 02 explores latents of a fuller run."),
        new_code_cell(
            '''from saekit.viz import write_report

print("report:", write_report(OUT))'''),
    ]


def explore_latents() -> list:
    return [
        new_markdown_cell(
            "# 02 · Explore latents\n\n"
            "Open a run, look at latent dashboards inline, and search latents by description or by token. "
            "The run is `make demo`'s (`runs/demo`, from the repository root) when it exists; otherwise a "
            "small demo run is made here first (about a minute on a CPU)."),
        new_code_cell(SETTINGS.format(out="runs/notebook-02")),
        new_markdown_cell(
            "## 1. Open a run\n\n"
            "`saekit.demo.run_demo` is the whole pipeline (`make demo`): caches of the model and of a "
            "randomly re-initialised copy, TopK SAEs with two seeds, evaluation, matching, latent records, "
            "descriptions (MaxAct, VocabProj, TokenChange) and embedding scores. Each step reuses its files."),
        new_code_cell(
            '''import json

from saekit.demo import DemoConfig, run_demo, summary_table

RUN = next((p for p in (Path("runs/demo"), Path("../runs/demo")) if (p / "summary.json").exists()), None)
if RUN is None:  # make a small run here (run_demo prints its summary table)
    RUN = OUT
    summary = run_demo(DemoConfig(out=str(RUN), model=MODEL, dataset=DATASET, n_tokens=60_000, widths=[128],
                                  train_tokens=120_000, eval_tokens=3_000, ce_contexts=16, n_latents=12,
                                  collect_tokens=30_000, score_windows=10, report_latents=50), progress=False)
else:
    summary = json.loads((RUN / "summary.json").read_text())
    print(f"run: {RUN}")
    print("\\n".join(summary_table(summary)))'''),
        new_markdown_cell(
            "## 2. Every described latent in one table\n\n"
            "`latent_table` reads the run's records, explanations and scores: one row per (records directory, "
            "latent, method), with the description, its score, the latent's frequency, the tokens it fires on "
            "(MaxAct) and the tokens it promotes (VocabProj, TokenChange)."),
        new_code_cell(
            '''from saekit.viz import iframe_html, latent_dashboard_html, latent_table, search_latents

table = latent_table(RUN)
print(f"{len(table)} descriptions of {len(table.drop_duplicates(['records', 'latent']))} latents "
      f"in {table['records'].nunique()} records directories")
table[["variant", "records", "latent", "method", "score", "description"]].head(8)'''),
        new_markdown_cell("Mean score per model variant and description method:"),
        new_code_cell('''table.groupby(["variant", "method"])["score"].mean().unstack()'''),
        new_markdown_cell(
            "## 3. Search by description\n\n"
            "Offline, descriptions are the evidence in short (*activates on ...*, *promotes ...*); with an LLM "
            "explainer (`SAEKIT_LLM_BACKEND=openai SAEKIT_LLM_MODEL=... make demo`) they are sentences, and "
            "this finds e.g. every latent described as firing on plural nouns."),
        new_code_cell(
            '''by_text = search_latents(table, text="the")
by_text[["variant", "latent", "method", "score", "description"]].head(8)'''),
        new_markdown_cell(
            "## 4. Search by token\n\n"
            "`token=` finds latents that fire on a token (`side=\"input\"`: MaxAct's top tokens), promote it "
            "(`\"output\"`: VocabProj, TokenChange) or either. Here, the token most described latents fire on:"),
        new_code_cell(
            '''latents = table.drop_duplicates(["records", "latent"])
common = latents["input_tokens"].explode().dropna().value_counts()
TOKEN = common.index[0]
print(f"most common input token: {TOKEN!r} ({common.iloc[0]} latents)")
by_token = search_latents(table, token=TOKEN, side="input", method="maxact")
by_token[["variant", "latent", "score", "frequency", "input_tokens"]].head(8)'''),
        new_markdown_cell(
            "## 5. A latent's dashboard, inline\n\n"
            "The report's dashboard for one latent: descriptions with their scores, its partner in the other "
            "seed, the activation histogram, VocabProj's logits, TokenChange's tokens, and the top and "
            "quantile contexts shaded by activation (hover a token for its value). Here the best-scored latent "
            "among those that fire on the token:"),
        new_code_cell(
            '''from IPython.display import HTML, display

best = by_token.iloc[0]
print(f"latent {best['latent']} of {best['records']}: {best['description']}")
display(HTML(iframe_html(latent_dashboard_html(RUN, int(best["latent"]), records=int(best["records_index"])))))'''),
        new_markdown_cell("And the best-scored MaxAct description of each model variant:"),
        new_code_cell(
            '''for variant, rows in table[table["method"] == "maxact"].groupby("variant"):
    top = rows.sort_values("score", ascending=False).iloc[0]
    print(f"{variant}: latent {top['latent']}, score {top['score']:.3f}: {top['description']}")
    display(HTML(iframe_html(latent_dashboard_html(RUN, int(top["latent"]), records=int(top["records_index"])),
                             height=520)))'''),
        new_markdown_cell(
            "The whole run, with an index of every dashboard, is one HTML file: "
            "`saekit report RUN` (or `saekit.viz.write_report(RUN)`); `make demo` writes it already."),
        new_code_cell('''print(summary.get("report") or RUN / "saekit-report.html")'''),
    ]


def score_published() -> list:
    return [
        new_markdown_cell(
            "# 03 · Score an SAE saved in SAELens's format\n\n"
            "Load an SAE that SAELens wrote, collect its latent records, describe its latents and score the "
            "descriptions. `saekit.load_sae` reads SAELens folders, sae-lens registry ids (`RELEASE/SAE_ID`, "
            "through `sae_lens.SAE.from_pretrained`) and sparsify checkpoints as saekit SAEs. Offline there is "
            "no hub, so step 1 makes a folder with the real `sae_lens` package first."),
        new_code_cell(SETTINGS.format(out="runs/notebook-03") + "\n" + MODEL_SOURCE),
        new_markdown_cell(
            "## 1. An SAE in SAELens's format, made offline\n\n"
            "Train a small TopK SAE with saekit, export it to SAELens's layout (`saekit.export_sae`), open it "
            "with `sae_lens.SAE.load_from_disk` and save it again with SAELens's own `save_model`: the folder "
            "below is written by SAELens. With hub access, skip this step and use a published SAE, e.g. "
            "`saekit.load_sae(\"pythia-70m-deduped-res-sm/blocks.3.hook_resid_post\")` with a cache of that model."),
        new_code_cell(
            CACHE + '''

from saekit.train import TrainConfig, train

[ours] = train(TrainConfig(cache=str(cache), out=str(OUT / "sae"), hooks=[HOOK], architecture="topk", d_sae=[256],
                           k=[8], seeds=[0], n_tokens=150_000, batch_size=512, warmup_steps=20, dead_tokens=50_000,
                           checkpoint_every=0, device=DEVICE), progress=False)'''),
        new_code_cell(
            '''import sae_lens

import saekit

exported = saekit.export_sae(ours, "saelens", OUT / "exported")
theirs = sae_lens.SAE.load_from_disk(str(exported))
PUBLISHED = OUT / "published-sae"
theirs.save_model(str(PUBLISHED))
print(f"sae_lens {type(theirs).__name__}: d_in {theirs.cfg.d_in}, d_sae {theirs.cfg.d_sae}, "
      f"hook {theirs.cfg.metadata.hook_name}")
sorted(p.name for p in PUBLISHED.iterdir())'''),
        new_markdown_cell(
            "## 2. Load it with `saekit.load_sae`\n\n"
            "The folder becomes one of saekit's SAE classes (SAELens's conventions mapped onto "
            "`(x - b_dec) @ W_enc + b_enc`); its latents equal SAELens's on real activations:"),
        new_code_cell(
            '''import torch

from saekit.data import ActivationStore

sae = saekit.load_sae(PUBLISHED)
print(f"saekit {type(sae).__name__}: {sae.cfg.architecture}, d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}, "
      f"k {sae.cfg.k}, hook {sae.cfg.hook_name}")
x = next(iter(ActivationStore(str(cache), HOOK, batch_size=256, seed=0)))
with torch.no_grad():
    same = torch.allclose(sae.encode(x), theirs.encode(x), atol=1e-4, rtol=1e-4)
print("saekit and sae_lens encode the same:", same)'''),
        new_markdown_cell(
            "## 3. Collect latent records\n\n"
            "One pass over the cache's last 30K tokens: per latent its frequency and activations, the top "
            "contexts, a quantile sample for explaining and scoring, random and hard negatives."),
        new_code_cell(
            '''from saekit.interp import CollectConfig, collect_records, load_records

records_dir = collect_records(CollectConfig(sae=str(PUBLISHED), cache=str(cache), out=str(OUT / "records"),
                                            n_tokens=30_000, first_context=-1, n_latents=64, n_top=20, n_explain=20,
                                            n_test=10, reservoir=100, n_random_negatives=10, n_hard_negatives=5,
                                            device=DEVICE), progress=False)
records = load_records(records_dir)
live = [int(f) for f in records.table.index[records.table["n_test"] >= 5]][:24]  # enough windows to score
print(f"{len(records.latents)} latents recorded; {len(live)} that fire often enough to score are described below")
records.table[["frequency", "mean_active_activation", "max_activation", "n_top", "n_test"]].head()'''),
        new_markdown_cell(
            "## 4. Describe: MaxAct, VocabProj, TokenChange\n\n"
            "MaxAct reads the top-activating contexts, VocabProj projects the decoder direction through the "
            "unembedding, TokenChange clamps the latent and watches the logits move (Gur-Arieh et al. 2025). "
            "Offline (`backend=\"none\"`) a description is that evidence in short; with "
            "`backend=\"openai\", llm_model=..., llm={\"base_url\": ...}` an LLM writes it from the same evidence."),
        new_code_cell(
            '''from saekit.interp import ExplainConfig, explain_latents

rows = explain_latents(ExplainConfig(records=str(records_dir), latents=live,
                                     methods=["maxact", "vocabproj", "tokenchange"], vocab_tokens=20,
                                     tc_sequences=16, device=DEVICE), progress=False)
pd.DataFrame(rows)[["latent", "method", "description"]].head(9)'''),
        new_markdown_cell(
            "## 5. Score with the embedding scorer\n\n"
            "delphi's embedding scorer needs no LLM judge: the description and the latent's activating and "
            "non-activating windows are embedded (all-MiniLM-L6-v2, shipped as a package), and the score is "
            "the AUROC of the description's similarity at telling the two apart (chance 0.5)."),
        new_code_cell(
            '''from saekit.interp import ScoreConfig, score_latents, summarize_scores
from saekit.interp.score.run import summary_lines

scores = score_latents(ScoreConfig(records=str(records_dir), scorers=["embedding"], n_activating=10,
                                   n_negatives=10, n_boot=200, device=DEVICE), progress=False)
means = summarize_scores(scores, n_boot=200)["embedding"]
print("\\n".join(summary_lines({"embedding": means})))'''),
        new_code_cell(
            '''import plotly.graph_objects as go

methods = [m for m in means if means[m]["mean"] is not None]
fig = go.Figure(go.Bar(x=methods, y=[means[m]["mean"] for m in methods],
                       error_y=dict(type="data", symmetric=False,
                                    array=[means[m]["ci_high"] - means[m]["mean"] for m in methods],
                                    arrayminus=[means[m]["mean"] - means[m]["ci_low"] for m in methods])))
fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
fig.update_layout(title="Embedding score per description method (95% bootstrap interval)", yaxis_title="AUROC",
                  height=400)
fig.show()'''),
        new_markdown_cell("The best-scored latent's dashboard:"),
        new_code_cell(
            '''from IPython.display import HTML, display

from saekit.viz import iframe_html, latent_dashboard_html

best = max((r for r in scores if r["score"] is not None), key=lambda r: r["score"])
print(f"latent {best['latent']} ({best['method']}, score {best['score']:.3f}): {best['description']}")
display(HTML(iframe_html(latent_dashboard_html(OUT, best["latent"], records=records_dir))))'''),
    ]


NOTEBOOKS = {
    "01_train_and_match.ipynb": train_and_match,
    "02_explore_latents.ipynb": explore_latents,
    "03_score_published.ipynb": score_published,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` (a key of NOTEBOOKS), without outputs."""
    notebook = new_notebook(cells=NOTEBOOKS[name]())
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"  # stable ids: rewriting an unchanged notebook changes nothing
    return notebook


def main() -> int:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
