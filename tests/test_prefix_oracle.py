"""Prefix tuning on the real SmolLM2-135M against Hugging Face `peft` as the oracle, and what a text start means.

peft: the same prefix tensors on the Hugging Face export of the same model give the same logits (the prefix's
layout, its positions, the attention mask over it and grouped-query heads all agree), for a padded batch too.
text start: a prefix started from words equals the model reading those words first.
"""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from torch.testing import assert_close

from groundup import peft as P
from groundup.interop import save_hf
from groundup.interop.peft_format import save_peft
from groundup.loading import load_pretrained

pytestmark = [pytest.mark.real_weights, pytest.mark.filterwarnings("ignore")]
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_pretrained("smollm2-135m-instruct")
    except FileNotFoundError as e:  # a packaged asset is missing: `make test` installs it
        pytest.fail(str(e))


def test_a_random_prefix_gives_peft_s_logits_on_the_hugging_face_export(smollm2, tmp_path):
    base, tok = smollm2
    hf_dir = save_hf(base, tok, tmp_path / "hf")
    model = P.inject(base, P.PrefixTuningConfig(n_virtual_tokens=6, reparam_hidden=None))
    with torch.no_grad():  # a prefix far from its start: keys and values at the model's own scale
        model.prefixes["default"].prefix.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    save_peft(model, tmp_path / "adapter")
    rows = [tok.encode("What is 12 + 7? The answer is"), tok.encode("Translate to French: cat")]
    T = max(map(len, rows))
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])  # left-padded, as batched generation pads
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(input_ids=ids, attention_mask=mask)
        plain = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(ours[real], theirs.logits[real], atol=2e-3, rtol=1e-4)  # logits of about 30: fp32 sums differ
    assert (ours[real] - plain[real]).abs().max() > 1.0  # and the prefix matters
    P.delete_adapter(model, "default")


def test_a_prefix_started_from_words_is_the_model_reading_them_first(smollm2):
    base, tok = smollm2
    words = "Compute the result and answer with the number only."
    n = len(tok.encode(words))
    model = P.inject(base, P.PrefixTuningConfig(n_virtual_tokens=n, reparam_hidden=None, init="text",
                                                init_text=words), tokenizer=tok)
    question = tok.encode(" What is 12 + 7?")
    with torch.no_grad():
        ours = model(torch.tensor([question]))
        model.disabled = True
        read = model(torch.tensor([tok.encode(words) + question]))[:, n:]
        model.disabled = False
    assert_close(ours, read, atol=1e-3, rtol=1e-4)
    P.delete_adapter(model, "default")
    with pytest.raises(P.PeftError, match="needs the tokenizer"):
        P.inject(base, P.PrefixTuningConfig(reparam_hidden=None, init="text", init_text=words))
    with pytest.raises(P.PeftError, match="set reparam_hidden=None"):
        P.PrefixTuningConfig(init="text", init_text=words)
