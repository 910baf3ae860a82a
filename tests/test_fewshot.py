"""Few-shot prompts: k shots from a template, deterministic with a seed, never the query itself; evaluation by
greedy exact match, on a tiny model and on the real SmolLM2."""

from __future__ import annotations

import json
import string

import pytest
import torch

from groundup.config import preset
from groundup.data import make_arithmetic_splits
from groundup.fewshot import (
    FEWSHOT_TEMPLATE,
    FewShotJob,
    build_fewshot_prompt,
    fewshot,
    fewshot_exact_match,
    load_pairs,
)
from groundup.loading import load_pretrained
from groundup.models import build_model
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint

EXAMPLES = [(f"{a} + {a} =", str(2 * a)) for a in range(10)]



def shots_of(prompt: str, sep: str = "\n\n") -> list[str]:
    return prompt.split(sep)[:-1]


def test_k_shots_rendered_with_the_template_then_the_query():
    prompt = build_fewshot_prompt(EXAMPLES, "7 + 1 =", k=3, seed=0)
    shots = shots_of(prompt)
    assert len(shots) == 3 and prompt.endswith("\n\nQ: 7 + 1 =\nA:")
    for shot in shots:
        q, a = shot.removeprefix("Q: ").split("\nA: ")
        assert (q, a) in EXAMPLES
    assert len(set(shots)) == 3  # drawn without replacement
    assert build_fewshot_prompt(EXAMPLES, "7 + 1 =", k=0) == "Q: 7 + 1 =\nA:"
    custom = build_fewshot_prompt(EXAMPLES, "x", k=2, template="In: {prompt} Out: {completion}.", separator=" | ")
    assert custom.count(" | ") == 2 and custom.endswith(" | In: x Out:")


def test_same_seed_same_prompt_other_seed_other_shots():
    a = build_fewshot_prompt(EXAMPLES, "q", k=4, seed=5)
    assert a == build_fewshot_prompt(EXAMPLES, "q", k=4, seed=5)
    assert len({build_fewshot_prompt(EXAMPLES, "q", k=4, seed=s) for s in range(6)}) > 1


def test_the_query_is_never_a_shot():
    query = EXAMPLES[3][0]
    for seed in range(20):
        prompt = build_fewshot_prompt(EXAMPLES, query, k=9, seed=seed)  # every example but the query
        assert prompt.count(query) == 1 and prompt.endswith(f"Q: {query}\nA:")
    with pytest.raises(ValueError, match="there are 9 examples to draw shots from"):
        build_fewshot_prompt(EXAMPLES, query, k=10)


def test_dict_records_braces_and_template_errors():
    records = [{"prompt": "say {completion}", "completion": "{prompt}"}, {"prompt": "b", "completion": "c"}]
    prompt = build_fewshot_prompt(records, "b", k=1)
    assert prompt == "Q: say {completion}\nA: {prompt}\n\nQ: b\nA:"  # texts are never re-formatted
    for bad in ("{completion} then {prompt}", "Q: {prompt}", "{prompt}{prompt}{completion}"):
        with pytest.raises(ValueError, match="must hold"):
            build_fewshot_prompt(records, "b", k=1, template=bad)
    with pytest.raises(ValueError, match=r"examples\[0\] needs string 'prompt' and 'completion'"):
        build_fewshot_prompt([{"prompt": "a"}], "b", k=1)


def test_fewshot_job_on_a_tiny_model(tmp_path):
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=32, block_size=256))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok)
    make_arithmetic_splits(30, 6, ops=("+",), max_digits=1, styles=("equation",), out_dir=tmp_path)
    assert load_pairs(tmp_path / "test.jsonl")[0][0].endswith("=")  # raw prompts, no instruction separator
    result = fewshot(FewShotJob(model=str(ckpt), shots=str(tmp_path / "train.jsonl"), data=str(tmp_path / "test.jsonl"),
                                k=3, max_new_tokens=3, limit=4))
    assert len(result.predictions) == 4 and len(result.prompts) == 4
    assert all(len(shots_of(p)) == 3 for p in result.prompts) and len(set(result.prompts)) == 4  # seed + i
    assert all("\n" not in p for p in result.predictions)  # stopped at the newline that ends an answer
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                                  "content": "yo"}]}) + "\n")
    with pytest.raises(ValueError, match="chat records"):
        load_pairs(chat)


@pytest.mark.real_weights
def test_smollm2_follows_the_answer_format_from_the_shots():
    try:
        model, tok = load_pretrained("smollm2-135m-instruct")
    except FileNotFoundError as e:  # a packaged asset is missing: `make test` installs it
        pytest.fail(str(e))
    train, test = make_arithmetic_splits(40, 8, seed=0, ops=("+",), max_digits=1, styles=("question",))
    zero = fewshot_exact_match(model, tok, train, test, k=0, max_new_tokens=4)
    four = fewshot_exact_match(model, tok, train, test, k=4, max_new_tokens=4)
    assert all(p.strip().isdigit() for p in four.predictions), four.predictions  # the shots teach the format
    assert not all(p.strip().isdigit() for p in zero.predictions), zero.predictions
    assert four.accuracy > zero.accuracy
    assert FEWSHOT_TEMPLATE.split("{prompt}")[0] in four.prompts[0]
