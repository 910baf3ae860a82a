"""The data commands: clean, augment, arithmetic, vlm, preferences. They need no torch (nor does their import), so
they start at once."""

from __future__ import annotations

from pathlib import Path

from ..cli import parse_list
from ..data.arithmetic import make_arithmetic_splits
from ..data.augment import augment_records
from ..data.clean import clean_jsonl
from ..data.instruct_jsonl import jsonl_objects, write_jsonl
from ..jobs.align import PreferencesJob
from ..jobs.files import ArithmeticJob, AugmentJob, CleanJob, VLMTaskJob


def str_list(value: list[str] | str, name: str) -> list[str]:
    """A list option given as one string ("[a, b]" in YAML, or a single item) as the list it means."""
    if not isinstance(value, str):
        return list(value)
    return parse_list(value, f"--{name}")  # "[+, -, *]" is three items, not YAML's alias marker


def clean_tokenizer(job: CleanJob):
    """The tokenizer the token-length filters count with (None when they are off); the error names the flag."""
    if job.clean.min_tokens is None and job.clean.max_tokens is None:
        return None
    if not job.tokenizer:
        raise ValueError("--clean.min_tokens/--clean.max_tokens count tokens: pass --tokenizer (a tokenizer.json "
                         "file, or a model whose tokenizer to use, e.g. --tokenizer=smollm2-135m-instruct or a "
                         "checkpoint folder), or filter by characters with --clean.min_chars/--clean.max_chars")
    from ..loading import load_tokenizer_of  # imports torch: only when tokens are counted

    return load_tokenizer_of(job.tokenizer)


def clean_cli(job: CleanJob):
    if not job.input or not job.out:
        raise ValueError("data clean needs --input (a JSONL file) and --out (where to write the kept records)")
    report = clean_jsonl(job.input, job.out, str_list(job.fields, "fields"), job.clean, clean_tokenizer(job))
    print(report.summary())
    for line, why in sorted(report.details.items()):
        print(f"  line {line}: {why}")
    print(f"wrote {job.out}")
    return report


def augment_cli(job: AugmentJob):
    if not job.input or not job.out:
        raise ValueError("data augment needs --input (a JSONL file) and --out (where to write)")
    records, report = augment_records([rec for _, rec in jsonl_objects(job.input)], job.field,
                                      str_list(job.methods, "methods"),
                                      job.n_per_record, job.seed, job.p, job.keep_original,
                                      str_list(job.protect, "protect"), job.payload_words)
    write_jsonl(job.out, records)
    print(f"{report.summary()}; wrote {job.out}")
    return report


def arithmetic_cli(job: ArithmeticJob) -> Path:
    train, test = make_arithmetic_splits(job.n_train, job.n_test, job.seed, str_list(job.ops, "ops"), job.max_digits,
                                         str_list(job.styles, "styles"), out_dir=job.out_dir)
    print(f"wrote {job.out_dir}/train.jsonl ({len(train)}) and {job.out_dir}/test.jsonl ({len(test)})")
    return Path(job.out_dir)


def vlm_cli(job: VLMTaskJob) -> Path:
    from ..data.vlm_tasks import write_vlm_task  # Pillow and numpy, no torch

    counts = write_vlm_task(job.out_dir, job.seed, job.test_fraction, job.fashion_train_per_class,
                            job.fashion_test_per_class)
    print(f"wrote {job.out_dir}/train.json ({counts['train']} conversations), {job.out_dir}/test.json "
          f"({counts['test']}) and {job.out_dir}/images/")
    return Path(job.out_dir)


def preferences_cli(job: PreferencesJob) -> Path:
    from ..data.ratings import human_ratings, rating_pairs, split_ratings  # numpy, no torch

    train, test = split_ratings(human_ratings(job.domain), seed=job.seed)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, ratings, n in (("train", train, job.n_train), ("test", test, job.n_test)):
        pairs = rating_pairs(ratings, n, job.min_margin, seed=job.seed)
        write_jsonl(out / f"{name}.jsonl", [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                             "margin": round(p.margin, 4)} for p in pairs])
    for name, ratings in (("prompts", train), ("prompts_test", test)):  # the openings of the split's own snippets
        openings = [" ".join(text.split()[: job.prompt_words]) for _, text in ratings
                    if len(text.split()) > job.prompt_words]
        write_jsonl(out / f"{name}.jsonl", [{"prompt": p} for p in openings[: job.n_prompts]])
    print(f"wrote {out}/train.jsonl ({job.n_train} pairs), test.jsonl ({job.n_test}), prompts.jsonl and "
          f"prompts_test.jsonl (the first {job.prompt_words} words of snippets) from {job.domain} ratings")
    return out
