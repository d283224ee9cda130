"""Scorers that run the model with the SAE (Gur-Arieh et al. 2025, arXiv 2501.08319).

**Output-based** (`output`): does steering with the latent produce what the description says?
1. For each target KL in `kl_targets` (paper: 0.25, 0.5, -0.25, -0.5) a bisection finds the clamp
   value v (magnitude in `clamp_range`, paper: [1, 1000]; negative targets clamp to -v) at which
   KL(clean || steered) of the next-token distributions, averaged over the positions of each
   prompt and then over `output_prompts` (paper: "The explanation is simple:", "I think", "We"),
   lies in [|target|, |target| + `kl_window`] (paper: 0.1).
2. Steering sets the latent to v inside the SAE reconstruction with the error term kept:
   x' = decode(z with z_f := v) + (x - decode(z)) = x + (v - z_f) W_dec[f], at every position but
   BOS, prompt and generated tokens alike.
3. From each prompt `gen_tokens` tokens (paper: 25) are sampled at `gen_temperature` (paper: 0.75),
   each sequence with its own generator seeded by (seed, latent, target, prompt), all (latent,
   target) rows of a prompt in one batch.
4. The judge sees the description and three sets of completions (this latent's and two other
   latents', in a seeded random order) and names the set; success = it picks this latent's.
   Per latent the score is the success rate over `output_trials` trials; chance is 1/3.

**Input-based** (`input`): the LLM writes `input_sentences` sentences (paper: 5) that should
activate the latent and as many that should not (JSON `positive` / `negative`); the model and SAE
run on them; success (score 1) iff the mean over sentences of the latent's max activation (BOS
left out) is higher for the positive ones. Ties, e.g. a latent silent on both, fail.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from saekit.interp.prompts import load_template, paper, prompt_set_of
from saekit.interp.prompts.replies import parse_choice, parse_sentences
from saekit.interp.score.examples import Item, ask_judge, escape, row

OUTPUT_PROMPTS = ("The explanation is simple:", "I think", "We")
KL_TARGETS = (0.25, 0.5, -0.25, -0.5)


def prompt_tokens(model: Any, prompts: list[str], prepend_bos: bool) -> list[torch.Tensor]:
    """Each prompt's token ids [1, L] (BOS first when prepend_bos)."""
    return [model.to_tokens(p, prepend_bos=prepend_bos).to(model.W_U.device) for p in prompts]


def steering_hook(sae: Any, latents: torch.Tensor, values: torch.Tensor, start: int) -> Callable[..., torch.Tensor]:
    """A forward hook on act [rows, pos, d] setting latent latents[r] to values[r] in row r at
    positions >= start: act + (value - z_f) W_dec[f], i.e. the reconstruction with the error kept."""
    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        rows, pos, d = act.shape
        if pos <= start:
            return act
        x = act[:, start:].to(sae.W_dec.dtype)  # [rows, p, d]
        z = sae.encode(x.reshape(-1, d)).view(rows, pos - start, -1)
        z_f = z.gather(-1, latents.view(rows, 1, 1).expand(rows, pos - start, 1))[..., 0]  # [rows, p]
        delta = (values.view(rows, 1) - z_f)[..., None] * sae.W_dec[latents].view(rows, 1, d)
        out = act.clone()
        out[:, start:] = (x + delta).to(act.dtype)
        return out
    return hook


@torch.no_grad()
def steered_kl(model: Any, sae: Any, hook_name: str, tokens: torch.Tensor, latents: list[int], values: list[float],
               start: int, clean_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """[rows] KL(clean || steered) of next-token distributions of tokens [1, L], averaged over
    positions >= start; row r steers latents[r] to values[r]. clean_log_probs: [L, vocab] if known."""
    device = model.W_U.device
    if clean_log_probs is None:
        clean_log_probs = torch.log_softmax(model(tokens)[0].double(), -1)
    index = torch.as_tensor(latents, device=device)
    target = torch.as_tensor(values, device=device, dtype=sae.W_dec.dtype)
    logits = model.run_with_hooks(tokens.expand(len(latents), -1),
                                  fwd_hooks=[(hook_name, steering_hook(sae, index, target, start))])
    log_q = torch.log_softmax(logits.double(), -1)
    kl = (clean_log_probs.exp() * (clean_log_probs - log_q)).sum(-1)  # [rows, L]
    return kl[:, start:].mean(-1).float().cpu()


@torch.no_grad()
def find_clamp_values(model: Any, sae: Any, hook_name: str, prompts: list[torch.Tensor], latents: list[int],
                      targets: list[float], start: int, window: float = 0.1,
                      clamp_range: tuple[float, float] = (1.0, 1000.0), max_steps: int = 20, batch_rows: int = 64,
                      progress: bool = False, grow: int = 0) -> dict[str, np.ndarray]:
    """Bisection for each (latent, target KL): {'values', 'kl', 'hit'} arrays [len(latents), len(targets)].

    The magnitude is bisected in clamp_range (the sign is the target's): too much KL halves the upper
    end, too little the lower one, until the mean KL over prompts is in [|t|, |t| + window] (hit)
    or max_steps have passed; a miss keeps the value whose KL came closest to the window.

    grow: before bisecting, a row whose KL at the top of the range is still below its target has
    its range moved up tenfold ([top, 10 top]), up to `grow` times. The paper's [1, 1000] is in its
    SAEs' activation scale; latents of SAEs on raw residual streams (Gemma's peak near 1,800 in
    saekit's demo) need more to move the output at all.
    """
    from tqdm.auto import tqdm

    pairs = [(f, t) for f in latents for t in targets]
    values = np.zeros(len(pairs))
    kls = np.zeros(len(pairs))
    hits = np.zeros(len(pairs), dtype=bool)
    cleans = [torch.log_softmax(model(tokens)[0].double(), -1) for tokens in prompts]
    bar = tqdm(total=len(pairs), desc="clamp search", unit="steering", disable=not progress)
    for lo_row in range(0, len(pairs), batch_rows):
        chunk = pairs[lo_row:lo_row + batch_rows]
        sign = np.sign([t for _, t in chunk])
        goal = np.abs([t for _, t in chunk])
        low, high = np.full(len(chunk), float(clamp_range[0])), np.full(len(chunk), float(clamp_range[1]))
        best_gap, best_value, best_kl = np.full(len(chunk), np.inf), np.zeros(len(chunk)), np.zeros(len(chunk))
        active = np.ones(len(chunk), dtype=bool)
        for _ in range(grow):
            rows = np.nonzero(active)[0]
            steer = [chunk[r][0] for r in rows]
            kl = np.mean([steered_kl(model, sae, hook_name, tokens, steer, list(sign[rows] * high[rows]), start,
                                     clean).numpy() for tokens, clean in zip(prompts, cleans)], axis=0)
            short = kl < goal[rows]
            if not short.any():
                break
            low[rows[short]], high[rows[short]] = high[rows[short]], high[rows[short]] * 10
        for _ in range(max_steps):
            rows = np.nonzero(active)[0]
            mid = (low[rows] + high[rows]) / 2
            steer = [chunk[r][0] for r in rows]
            kl = np.mean([steered_kl(model, sae, hook_name, tokens, steer, list(sign[rows] * mid), start, clean).numpy()
                          for tokens, clean in zip(prompts, cleans)], axis=0)
            gap = np.maximum(goal[rows] - kl, 0) + np.maximum(kl - goal[rows] - window, 0)
            better = gap < best_gap[rows]
            improved = rows[better]
            best_gap[improved], best_value[improved], best_kl[improved] = gap[better], mid[better], kl[better]
            too_much = kl > goal[rows]
            high[rows[too_much]] = mid[too_much]
            low[rows[~too_much]] = mid[~too_much]
            active[rows[gap == 0]] = False
            if not active.any():
                break
        span = slice(lo_row, lo_row + len(chunk))
        values[span], kls[span], hits[span] = sign * best_value, best_kl, best_gap == 0
        bar.update(len(chunk))
    bar.close()
    shape = (len(latents), len(targets))
    return {"values": values.reshape(shape), "kl": kls.reshape(shape), "hit": hits.reshape(shape)}


def row_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, latent, target, prompt): one generator per sequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@torch.no_grad()
def generate_steered(model: Any, sae: Any, hook_name: str, tokens: torch.Tensor, latents: list[int],
                     values: list[float], start: int, n_new: int, temperature: float, seeds: list[int]
                     ) -> list[list[int]]:
    """New token ids [rows][n_new] sampled from tokens [1, L], row r steered by latents[r] := values[r]
    at every position >= start (prompt and generated), each row drawn with its own seeded generator
    (so a row's tokens do not depend on the other rows of the batch); temperature 0 = greedy."""
    if tokens.shape[1] + n_new > model.cfg.n_ctx:
        raise ValueError(f"ScoreConfig.gen_tokens: {tokens.shape[1]} prompt + {n_new} new tokens exceed the "
                         f"model's context of {model.cfg.n_ctx}")
    device = model.W_U.device
    rows = len(latents)
    hook = steering_hook(sae, torch.as_tensor(latents, device=device),
                         torch.as_tensor(values, device=device, dtype=sae.W_dec.dtype), start)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    sequence = tokens.expand(rows, -1).clone()
    for _ in range(n_new):
        logits = model.run_with_hooks(sequence, fwd_hooks=[(hook_name, hook)])[:, -1].float().cpu()
        if temperature <= 0:
            chosen = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1)
            chosen = torch.cat([torch.multinomial(probs[r], 1, generator=generators[r]) for r in range(rows)])
        sequence = torch.cat([sequence, chosen.to(device)[:, None]], 1)
    return sequence[:, tokens.shape[1]:].tolist()


def decode(model: Any, ids: list[int]) -> str:
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer.decode(ids) if tokenizer is not None else " ".join(f"#{i}" for i in ids)


def output_generations(model: Any, sae: Any, hook_name: str, latents: list[int], config: Any, prepend_bos: bool,
                       progress: bool = True) -> dict[int, dict[str, Any]]:
    """{latent: {'targets', 'values', 'kl', 'hit', 'completions' [target][prompt]}}: the clamp search
    and the steered completions of every latent, independent of any description."""
    from tqdm.auto import tqdm

    start = 1 if prepend_bos else 0
    targets = list(config.kl_targets)
    prompts = prompt_tokens(model, list(config.output_prompts), prepend_bos)
    search = find_clamp_values(model, sae, hook_name, prompts, latents, targets, start, config.kl_window,
                               tuple(config.clamp_range), config.search_steps, config.steer_batch, progress,
                               config.clamp_grow)
    pairs = [(i, j) for i in range(len(latents)) for j in range(len(targets))]
    completions: dict[tuple[int, int, int], str] = {}
    bar = tqdm(total=len(pairs) * len(prompts), desc="steered generation", unit="seq", disable=not progress)
    for p, tokens in enumerate(prompts):
        for lo in range(0, len(pairs), config.steer_batch):
            chunk = pairs[lo:lo + config.steer_batch]
            ids = generate_steered(model, sae, hook_name, tokens, [latents[i] for i, _ in chunk],
                                   [float(search["values"][i, j]) for i, j in chunk], start, config.gen_tokens,
                                   config.gen_temperature, [row_seed(config.seed, latents[i], j, p) for i, j in chunk])
            for (i, j), new in zip(chunk, ids):
                completions[(i, j, p)] = decode(model, new)
            bar.update(len(chunk))
    bar.close()
    return {f: {"targets": targets, "values": [round(float(v), 4) for v in search["values"][i]],
                "kl": [round(float(k), 4) for k in search["kl"][i]], "hit": [bool(h) for h in search["hit"][i]],
                "completions": [[completions[(i, j, p)] for p in range(len(prompts))] for j in range(len(targets))]}
            for i, f in enumerate(latents)}


def set_text(generation: dict[str, Any], prompts: list[str]) -> str:
    """One set of completions as the judge sees it: "<+0.25> 'prompt': 'completion'" lines."""
    return "\n".join(f"<{target:+g}> '{prompt}': '{escape(text)}'"
                     for target, texts in zip(generation["targets"], generation["completions"])
                     for prompt, text in zip(prompts, texts))


def choice_validator(_: Any = None) -> Callable[[str], str | None]:
    return lambda reply: None if parse_choice(reply) is not None else "wrong_format: no set number 1, 2 or 3"


def run_output(items: list[Item], generations: dict[int, dict[str, Any]], config: Any, backend: Any,
               progress: bool = True) -> list[dict[str, Any]]:
    """Output-based rows: per item and trial the judge picks one of three sets of completions."""
    template = load_template("output_judge", config.prompt_dir or None, prompt_set_of(config))
    write_set = paper.set_text if prompt_set_of(config) == "paper" else set_text
    prompts = list(config.output_prompts)
    pool = list(generations)
    requests, owners = [], []
    for index, item in enumerate(items):
        for trial in range(config.output_trials):
            rng = np.random.default_rng([config.seed, item.latent, trial, 3])
            distractors = [int(f) for f in rng.choice([f for f in pool if f != item.latent], 2, replace=False)]
            order = [([item.latent] + distractors)[k] for k in rng.permutation(3)]
            sets = {f"set{k + 1}": write_set(generations[f], prompts) for k, f in enumerate(order)}
            requests.append(template.messages(explanation=item.description, **sets))
            owners.append((index, order.index(item.latent) + 1, distractors))
    replies = ask_judge(backend, requests, [0] * len(requests), choice_validator, progress)
    trials: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(items))}
    for (index, correct, distractors), reply in zip(owners, replies):
        chosen = parse_choice(reply.text) if reply.ok else None
        trials[index].append({"correct_set": correct, "chosen_set": chosen, "success": chosen == correct if chosen
                              else None, "distractors": distractors,
                              "reply": reply.text if reply.ok else f"<{reply.error}> {reply.text}"})
    rows = []
    for index, item in enumerate(items):
        answered = [t["success"] for t in trials[index] if t["success"] is not None]
        score = float(np.mean(answered)) if answered else None
        generation = generations[item.latent]
        details = {"trials": trials[index], **{k: generation[k] for k in ("targets", "values", "kl", "hit")},
                   "prompts": prompts, "completions": generation["completions"]}
        rows.append(row(item, "output", score, len(answered), details,
                        None if answered else "the judge answered no trial", template.id))
    return rows


# ---- input-based -----------------------------------------------------------------------------------
def sentences_validator(_: Any = None) -> Callable[[str], str | None]:
    return lambda reply: None if parse_sentences(reply) is not None else \
        "wrong_format: no JSON object with non-empty 'positive' and 'negative' lists"


@torch.no_grad()
def sentence_max_acts(model: Any, sae: Any, hook_name: str, sentences: list[str], latents: list[int],
                      prepend_bos: bool, batch_size: int = 32) -> list[float]:
    """For each sentence i, the max over its tokens (BOS left out) of latent latents[i]'s activation.

    Sentences run in right-padded batches: with causal attention, padding after a sentence changes
    none of its own positions; padded positions are masked out of the max.
    """
    from saekit.data.cache import hook_layer

    device = model.W_U.device
    layer = hook_layer(hook_name)
    stop = None if layer is None else layer + 1
    start = 1 if prepend_bos else 0
    out: list[float] = []
    for lo in range(0, len(sentences), batch_size):
        ids = [model.to_tokens(s, prepend_bos=prepend_bos)[0] for s in sentences[lo:lo + batch_size]]
        lengths = torch.tensor([len(t) for t in ids])
        tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for r, t in enumerate(ids):
            tokens[r, :len(t)] = t.cpu()
        found: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            found["act"] = act

        model.run_with_hooks(tokens.to(device), fwd_hooks=[(hook_name, grab)], stop_at_layer=stop)
        act = found["act"]
        z = sae.encode(act.reshape(-1, act.shape[-1]).to(sae.W_dec.dtype)).view(act.shape[0], act.shape[1], -1)
        index = torch.as_tensor(latents[lo:lo + batch_size], device=z.device)
        z_f = z.gather(-1, index.view(-1, 1, 1).expand(-1, z.shape[1], 1))[..., 0].float().cpu()  # [b, L]
        positions = torch.arange(z_f.shape[1])[None, :]
        valid = (positions >= start) & (positions < lengths[:, None])
        masked = torch.where(valid, z_f, torch.full_like(z_f, -torch.inf)).amax(1)
        out += [float(v) if torch.isfinite(v) else 0.0 for v in masked]
    return out


def run_input(items: list[Item], model: Any, sae: Any, hook_name: str, config: Any, backend: Any, prepend_bos: bool,
              progress: bool = True) -> list[dict[str, Any]]:
    """Input-based rows: the LLM writes sentences per description, the latent's activations decide."""
    template = load_template("input_sentences", config.prompt_dir or None, prompt_set_of(config))
    requests = [template.messages(explanation=item.description, n=config.input_sentences) for item in items]
    replies = ask_judge(backend, requests, [0] * len(requests), sentences_validator, progress)
    parsed = [parse_sentences(r.text) if r.ok else None for r in replies]
    sentences, owners = [], []
    for index, (item, lists) in enumerate(zip(items, parsed)):
        if lists is not None:
            for kind, group in zip(("positive", "negative"), lists):
                sentences += group
                owners += [(index, kind)] * len(group)
    acts = sentence_max_acts(model, sae, hook_name, sentences, [items[i].latent for i, _ in owners], prepend_bos)
    rows = []
    for index, (item, reply, lists) in enumerate(zip(items, replies, parsed)):
        raw = reply.text if reply.ok else f"<{reply.error}> {reply.text}"
        if lists is None:
            rows.append(row(item, "input", None, 0, {"reply": raw}, "the LLM wrote no usable sentences", template.id))
            continue
        mine = {kind: [a for (i, k), a in zip(owners, acts) if i == index and k == kind]
                for kind in ("positive", "negative")}
        mean_pos, mean_neg = float(np.mean(mine["positive"])), float(np.mean(mine["negative"]))
        details = {"positive": lists[0], "negative": lists[1], "positive_acts": [round(a, 5) for a in mine["positive"]],
                   "negative_acts": [round(a, 5) for a in mine["negative"]], "mean_positive": mean_pos,
                   "mean_negative": mean_neg, "reply": raw}
        rows.append(row(item, "input", float(mean_pos > mean_neg), 1, details, None, template.id))
    return rows
