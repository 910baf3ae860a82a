"""DPO and IPO against `trl` (a test oracle only): the same policy, exported to Hugging Face, the same pairs and the
same reference log-probs (precomputed, as both libraries can) give trl's DPOTrainer the loss groundup's DPOObjective
computes: the policy's log-probs of the responses agree, and so do the losses built on them."""

from __future__ import annotations

import pytest
import torch
import transformers
from serve_helpers import chat_tokenizer, tiny_decoder

from groundup.align import DPOObjective, precompute_reference
from groundup.data.preference import Preference, PreferenceData
from groundup.interop import save_hf

pytestmark = pytest.mark.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

PAIRS = [("say 1:", " good day", " bad day"), ("say 2:", " fine work and kind words", " poor work"),
         ("say 3:", " warm light", " cruel words, bad day")]


def perturbed(vocab: int, scale: float) -> torch.nn.Module:
    model = tiny_decoder(vocab)
    g = torch.Generator().manual_seed(int(scale * 100))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(("loss_type", "beta"), [("sigmoid", 0.3), ("ipo", 0.5)])
def test_dpo_loss_equals_trl_dpo_trainer_on_the_same_models_and_pairs(tmp_path, loss_type, beta):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = chat_tokenizer()
    policy, reference = perturbed(tok.vocab_size, 0.05), perturbed(tok.vocab_size, 0.02)
    data = PreferenceData([Preference(*p, line=i + 1) for i, p in enumerate(PAIRS)], tok, 64)
    precompute_reference(reference, data, average=loss_type == "ipo")
    with torch.no_grad():
        ours, metrics = DPOObjective(beta=beta, loss_type=loss_type)(policy.eval(), data.batch([0, 1, 2]))

    hf = transformers.AutoModelForCausalLM.from_pretrained(save_hf(policy, tok, tmp_path / "hf"), dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(PAIRS), beta=beta,
                     loss_type=[loss_type], max_length=None, report_to=[], use_cpu=True, precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=hf.eval(), args=args,
                         processing_class=transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"),
                         train_dataset=Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r}
                                                          for p, c, r in PAIRS]))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    n_chosen = int(batch["completion_mask"][: len(PAIRS)].sum())  # the same response tokens, eos included
    assert n_chosen == int((data.batch([0, 1, 2])["chosen_labels"] != -100).sum())
    sums = data.reference
    if loss_type == "ipo":  # trl takes summed log-probs and divides by the response length; ours came averaged
        lengths = torch.stack([(data.batch([0, 1, 2])[f"{s}_labels"] != -100).sum(-1) for s in ("chosen", "rejected")],
                              -1)
        sums = data.reference * lengths
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = sums.unbind(-1)
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4, abs=1e-6)
    assert abs(float(ours) - (0.6931 if loss_type == "sigmoid" else (1 / (2 * beta)) ** 2)) > 1e-3  # policy != ref
    if loss_type == "sigmoid":
        logged = trainer._metrics["eval"]  # the model is in eval mode
        assert float(metrics["reward_accuracy"]) == pytest.approx(logged["rewards/accuracies"][-1])
