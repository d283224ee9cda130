"""Feature absorption on planted cases: a letter whose main latent is absorbed on a known subset of its
words, a letter split over two latents, and the prompt/vocabulary builders."""

import numpy as np
import pytest
import torch

from saekit.eval.absorption import (AbsorptionConfig, absorption_figure, absorption_from_activations,
                                    split_features, word_absorption)
from saekit.eval.tasks import LETTERS, alpha_words, rst_line_labels, spelling_prompts
from saekit.sae import SAEConfig, build_sae

D_IN, N_ABSORBERS, N_NOISE = 128, 8, 40


def planted(n_per_letter=900, absorbed_per_latent=0.025, seed=0):
    """Words of letters a, b, c (+ unrelated words): x = letter direction + absorber/split direction +
    noise. Latents: 0 = a's main latent, suppressed when an absorber direction is present; 1..8 =
    absorbers, each on `absorbed_per_latent` of the a-words, decoder (d_a + e_j)/sqrt(2); 9, 10 = b
    split in two halves (decoders d_b + f_j); 11 = c's main latent; then noise latents orthogonal to
    the letters. Returns (sae, x, letters, absorbed mask)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D_IN, D_IN)))[0].T  # orthonormal rows
    d_a, d_b, d_c = basis[0], basis[1], basis[2]
    e = basis[3:3 + N_ABSORBERS]
    f = basis[3 + N_ABSORBERS:5 + N_ABSORBERS]
    rest = basis[5 + N_ABSORBERS:]
    xs, letters, absorbed = [], [], []
    n_abs = int(n_per_letter * absorbed_per_latent)
    for letter, direction in ((0, d_a), (1, d_b), (2, d_c), (3, None)):
        for i in range(n_per_letter):
            x = rng.normal(scale=0.03, size=D_IN) + 0.3 * rest[rng.integers(len(rest))]
            hit = False
            if direction is not None:
                x += direction
            if letter == 0 and i < n_abs * N_ABSORBERS:
                x += e[i // n_abs]
                hit = True
            if letter == 1:
                x += f[i % 2]
            xs.append(x)
            letters.append(letter if letter < 3 else 3 + int(rng.integers(20)))  # unrelated letters d..w
            absorbed.append(hit)
    d_sae = 12 + N_NOISE
    sae = build_sae(SAEConfig(architecture="relu", d_in=D_IN, d_sae=d_sae, normalize_activations="none"))
    W_enc, b_enc, W_dec = np.zeros((D_IN, d_sae)), np.zeros(d_sae), np.zeros((d_sae, D_IN))
    W_enc[:, 0] = d_a - 3 * e.sum(0)
    W_dec[0] = d_a
    b_enc[0] = -0.3
    for j in range(N_ABSORBERS):
        W_enc[:, 1 + j] = np.sqrt(2) * e[j]
        b_enc[1 + j] = -0.3
        W_dec[1 + j] = (d_a + e[j]) / np.sqrt(2)
    for j in range(2):
        W_enc[:, 9 + j] = d_b + f[j] - f[1 - j]
        b_enc[9 + j] = -0.5
        W_dec[9 + j] = (d_b + f[j]) / np.sqrt(2)
    W_enc[:, 11], W_dec[11], b_enc[11] = d_c, d_c, -0.3
    for j in range(N_NOISE):
        W_enc[:, 12 + j] = W_dec[12 + j] = rest[j % len(rest)]
        b_enc[12 + j] = -0.1
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_enc, dtype=torch.float32))
        sae.b_enc.copy_(torch.tensor(b_enc, dtype=torch.float32))
        sae.W_dec.copy_(torch.tensor(W_dec, dtype=torch.float32))
        sae.b_dec.zero_()
    return sae, torch.tensor(np.array(xs), dtype=torch.float32), np.array(letters), np.array(absorbed)


@pytest.fixture(scope="module")
def planted_result():
    sae, x, letters, absorbed = planted()
    order = np.random.default_rng(1).permutation(len(x))
    train, test = order[: int(0.7 * len(x))], order[int(0.7 * len(x)):]
    config = AbsorptionConfig(min_letters=1)
    result = absorption_from_activations(sae, x[train], letters[train], x[test], letters[test], config)
    return result, letters[test], absorbed[test]


def detail(result, letter):
    return next(d for d in result["eval_result_details"] if d["first_letter"] == letter)


def test_planted_absorbing_latents_give_the_planted_fraction(planted_result):
    result, letters, absorbed = planted_result
    a = detail(result, "a")
    assert a["probe_f1"] > 0.95 and a["used"]
    assert a["split_feats"] == [0]  # the absorbers each add too little F1 to count as a split
    planted_fraction = absorbed[letters == 0].mean()  # 0.2 of the a-words, as drawn into the test split
    assert a["num_probe_true_positives"] >= 0.95 * (letters == 0).sum()
    assert a["full_absorption_rate"] == pytest.approx(planted_fraction, abs=0.02)
    assert a["mean_absorption_fraction"] == pytest.approx(planted_fraction, abs=0.02)
    assert 0.15 < planted_fraction < 0.25


def test_unabsorbed_and_split_letters(planted_result):
    result, _, _ = planted_result
    b, c = detail(result, "b"), detail(result, "c")
    assert set(b["split_feats"]) == {9, 10}
    assert b["num_split_features"] == 2 and b["mean_absorption_fraction"] < 0.02
    assert c["split_feats"] == [11] and c["mean_absorption_fraction"] < 0.02 and c["full_absorption_rate"] < 0.02
    means = result["eval_result_metrics"]["mean"]
    used = [d for d in result["eval_result_details"] if d["used"]]
    assert means["mean_absorption_fraction_score"] == pytest.approx(np.mean([d["mean_absorption_fraction"]
                                                                             for d in used]))
    assert set(means) == {"mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                          "std_dev_absorption_fraction_score", "std_dev_full_absorption_score",
                          "std_dev_num_split_features"}
    absorption_figure(result)


def test_too_few_letters_gives_no_mean(planted_result):
    sae, x, letters, _ = planted(n_per_letter=200)
    result = absorption_from_activations(sae, x[::2], letters[::2], x[1::2], letters[1::2], AbsorptionConfig())
    assert result["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] is None
    assert "min_letters" in result["note"]


def test_word_absorption_hand_computed():
    """Two latents, probe along e0: latent 1 (cos 0.8) absorbs word 0 fully; word 1 is the main
    latent's; word 2 shares: main carries 0.5 of x.p = 1, latent 1 carries 0.8*1 -> min(0.8, 0.5) / 1."""
    W_dec = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    x = torch.tensor([[1.0, 0.75], [1.0, 0.0], [1.0, 0.0]])
    latents = torch.tensor([[0.0, 1.25], [1.0, 0.0], [0.5, 1.0]])
    fraction, full = word_absorption(x, latents, W_dec, torch.tensor([2.0, 0.0]), main=[0])
    assert fraction.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert full.tolist() == [True, False, False]


def test_split_features_rule():
    rows = [{"k": 1, "f1": 0.5, "feats": [3]}, {"k": 2, "f1": 0.8, "feats": [3, 7]},
            {"k": 3, "f1": 0.82, "feats": [3, 7, 1]}, {"k": 4, "f1": 0.95, "feats": [3, 7, 1, 2]}]
    assert split_features(rows, 0.03) == [3, 7]


def test_vocabulary_words_and_prompts():
    from transformers import AutoTokenizer  # noqa: F401  (the test tokenizer is a local BPE)
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    from saekit.models import wrap_tokenizer

    text = ["the cat has a dog and the Dog eats Apples quickly", "zebra xylophone 42 cat-like has first letter"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = wrap_tokenizer(tok)
    words = alpha_words(tokenizer)
    texts = {w.text for w in words}
    assert {" cat", " dog", " Dog", " has"} <= texts and not any(" 42" == t or "-" in t for t in texts)
    assert all(LETTERS[w.letter] == w.text[1].lower() for w in words)
    prompts = spelling_prompts(words, tokenizer, icl_examples=3, words_per_prompt=2, bos=0, seed=1)
    assert sorted(i for p in prompts for i in p.words) == list(range(len(words)))
    p = prompts[0]
    assert [p.tokens[q] for q in p.positions] == [words[i].token_id for i in p.words]
    decoded = tokenizer.decode(p.tokens[1:])
    assert decoded.count("has the first letter:") == 3 + len(p.words)
    line = decoded.split("\n")[4]
    assert line.startswith(words[p.words[0]].text) and line.endswith(": " + words[p.words[0]].text[1].upper())


def test_rst_line_labels():
    text = ("Title\n=====\n\nThis is a prose line with several words in it.\nExample::\n\n"
            "    x = compute(1, 2)\n    print(x)\n\nBack to prose with enough words here.\n"
            ".. code-block:: python\n   :linenos:\n\n   import os\n>>> 1 + 1\n")
    assert rst_line_labels(text) == [-1, -1, -1, 0, -1, -1, 1, 1, -1, 0, -1, -1, -1, 1, 1, -1]
