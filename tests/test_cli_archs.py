"""The model-using commands on every architecture, through a real subprocess: an encoder-decoder generates (greedy,
sampled, beam search) and is scored on source<TAB>target lines, a BERT encoder is scored by pseudo-perplexity,
commands that cannot apply say so in one line, and decoders at the end of their context slide (RoPE, ALiBi) or
stop with a message (learned positions)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import groundup as groundup_cli
from cli_helpers import hamlet_corpus

import groundup
from groundup.generate import ContextLimitWarning, GenerationConfig, generate, sample
from groundup.generate_seq2seq import beam_search, seq2seq_generate, translate_text
from groundup.models import build_model

FAST = ["--train.batch_size=4", "--train.eval_every=0", "--train.progress=false", "--train.warmup_steps=2",
        "--train.dtype=fp32"]
SOURCES = ["abcdef", "hello", "qwerty"]




def pretrain(out: Path, *args: str) -> Path:
    done = groundup_cli("pretrain", *FAST, f"--train.out_dir={out}", *args)
    assert done.returncode == 0, done.stderr
    return out / "ckpt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return hamlet_corpus(tmp_path_factory.mktemp("corpus") / "text.txt")


@pytest.fixture(scope="module")
def reversal(tmp_path_factory) -> Path:
    """configs/transformer-reversal.yaml at a reduced size, trained enough to decode sequences that are not
    constant (60 steps); reversing well takes ~500 steps, too slow here."""
    return pretrain(tmp_path_factory.mktemp("reversal"), "--config=configs/transformer-reversal.yaml",
                    "--train.max_steps=60", "--train.batch_size=32", "--data.n_pairs=2000", "--model.d_model=64",
                    "--model.d_ff=128", "--model.n_layer=1", "--model.block_size=16")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return pretrain(tmp_path_factory.mktemp("bert"), "--config=configs/bert-mini-mlm.yaml", "--train.max_steps=3",
                    "--model.n_layer=1", "--model.d_model=64", "--model.d_ff=128", "--model.block_size=32")


def tiny_decoder(tmp_path_factory, corpus: Path, pos: str) -> Path:
    return pretrain(tmp_path_factory.mktemp(pos), "--model.preset=gpt-tiny", f"--model.pos={pos}",
                    "--model.n_layer=1", "--model.d_model=32", "--model.block_size=32", "--train.max_steps=3",
                    f"--data.corpus={corpus}")


@pytest.fixture(scope="module")
def learned(tmp_path_factory, corpus) -> Path:
    return tiny_decoder(tmp_path_factory, corpus, "learned")


@pytest.fixture(scope="module")
def rope(tmp_path_factory, corpus) -> Path:
    return tiny_decoder(tmp_path_factory, corpus, "rope")


def load(ckpt: Path):
    return groundup.load_pretrained(ckpt)  # fp32, eval mode


# --- encoder-decoder: generate ----------------------------------------------------------------------------------
def reference_decode(model, src: list[int], bos: int, eos: int, pick) -> list[int]:
    """One token at a time, rerunning the whole model (encoder + decoder over the whole prefix) each step."""
    tgt = [bos]
    with torch.no_grad():
        for _ in range(model.config.block_size):
            logits = model(torch.tensor([src]), torch.tensor([tgt]))[:, -1]  # (1, V)
            tgt.append(int(pick(logits)))
            if tgt[-1] == eos:
                break
    return tgt[1:]


def reference_beam(model, src: list[int], bos: int, eos: int, k: int) -> list[int]:
    """Plain beam search over lists, rerunning the whole model per hypothesis: keep the k best unfinished
    hypotheses by summed log-probability; an <eos> among the k best extensions finishes one; stop once the best
    finished one beats every unfinished one (log-probabilities only fall)."""
    beams, best = [(0.0, [bos])], (-math.inf, [])
    with torch.no_grad():
        for _ in range(model.config.block_size):
            ext = []
            for score, seq in beams:
                logp = model(torch.tensor([src]), torch.tensor([seq]))[0, -1].float().log_softmax(-1)
                ext += [(score + float(lp), seq + [t]) for t, lp in enumerate(logp.tolist())]
            ext.sort(key=lambda e: -e[0])
            for score, seq in ext[:k]:
                if seq[-1] == eos and score > best[0]:
                    best = (score, seq)
            beams = [e for e in ext if e[1][-1] != eos][:k]
            if best[0] >= beams[0][0]:
                break
    return (best[1] if best[0] >= beams[0][0] else beams[0][1])[1:]


def text_of(tok, ids: list[int]) -> str:
    return tok.decode([t for t in ids if t != tok.eos_id])


def test_seq2seq_greedy_generate_equals_a_full_recompute_argmax(reversal):
    model, tok = load(reversal)
    done = groundup_cli("generate", f"--model={reversal}", "--prompt=hello", "--temperature=0", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    ref = reference_decode(model, tok.encode("hello"), tok.bos_id, tok.eos_id, lambda x: x.argmax(-1))
    assert len(ref) > 1 and ref[-1] == tok.eos_id  # a real target, ended by <eos>
    assert done.stdout == text_of(tok, ref) + "\n"  # the target only: the source is not echoed


def test_seq2seq_beam_search_through_the_cli_equals_a_reference_beam_search(reversal):
    model, tok = load(reversal)
    done = groundup_cli("generate", f"--model={reversal}", "--prompt=abcdef", "--num_beams=3", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    ref = reference_beam(model, tok.encode("abcdef"), tok.bos_id, tok.eos_id, 3)
    assert done.stdout == text_of(tok, ref) + "\n"


def test_beam_search_with_one_beam_is_greedy_and_batched_rows_decode_as_alone(reversal):
    model, tok = load(reversal)
    sources = [tok.encode(s) for s in SOURCES + ["a", "zyxwvutsrqpo"]]
    bos, eos = tok.bos_id, tok.eos_id
    greedy = seq2seq_generate(model, sources, GenerationConfig(max_new_tokens=16, temperature=0), bos, eos)
    assert beam_search(model, sources, 1, 16, bos, eos) == greedy
    assert [reference_decode(model, s, bos, eos, lambda x: x.argmax(-1)) for s in sources] == greedy
    wide = beam_search(model, sources, 4, 16, bos, eos)
    assert wide == [reference_beam(model, s, bos, eos, 4) for s in sources]  # batched rows == each alone
    assert wide != greedy  # the beam found other targets for some sources: the comparison above is not vacuous


def test_seq2seq_decoding_stops_at_the_decoders_context_and_says_so(reversal):
    model, tok = load(reversal)
    never = tok.bos_id  # an "eos" the decoder never produces: decoding runs to the end of the target positions
    for run in (lambda: seq2seq_generate(model, [[3, 4]], GenerationConfig(max_new_tokens=50, temperature=0),
                                         tok.bos_id, never),
                lambda: beam_search(model, [[3, 4]], 2, 50, tok.bos_id, never)):
        with pytest.warns(ContextLimitWarning, match="stopped after 16 of 50 tokens without <eos>"):
            assert len(run()[0]) == 16


def test_seq2seq_sampling_is_seeded_and_equals_a_full_recompute(reversal):
    model, tok = load(reversal)
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.3, top_k=10, top_p=0.95, seed=3)
    for source in SOURCES:
        out = seq2seq_generate(model, [tok.encode(source)], cfg, tok.bos_id, tok.eos_id)[0]
        generator = torch.Generator().manual_seed(3)
        assert out == reference_decode(model, tok.encode(source), tok.bos_id, tok.eos_id,
                                       lambda x: sample(x, cfg, generator))  # noqa: B023 (used at once)
    done = groundup_cli("generate", f"--model={reversal}", "--prompt=abcdef", "--seed=5", "--temperature=1.5",
                        "--top_k=null", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    cli = GenerationConfig(max_new_tokens=200, temperature=1.5, seed=5)  # the CLI's defaults otherwise
    assert done.stdout == translate_text(model, tok, "abcdef", cli) + "\n"


# --- encoder-decoder and encoder: eval ---------------------------------------------------------------------------
def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, text
    return float(found.group(1))


def test_seq2seq_eval_reports_target_perplexity(reversal, tmp_path):
    pairs = [("abc", "cba"), ("hello", "olleh"), ("qwerty", "ytrewq"), ("zz", "zz")]
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{s}\t{t}\n" for s, t in pairs) + "\n")  # a blank line is skipped
    done = groundup_cli("eval", f"--model={reversal}", f"--data={data}", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    model, tok = load(reversal)
    total, count = 0.0, 0
    with torch.no_grad():
        for s, t in pairs:  # one pair at a time: no padding involved
            tgt = tok.encode(t)
            logits = model(torch.tensor([tok.encode(s)]), torch.tensor([[tok.bos_id, *tgt]]))[0]
            total += float(F.cross_entropy(logits, torch.tensor([*tgt, tok.eos_id]), reduction="sum"))
            count += len(tgt) + 1
    assert f"{count} target tokens" in done.stdout and "4 pairs" in done.stdout
    assert number(r"target loss ([\d.]+)", done.stdout) == pytest.approx(total / count, abs=1e-4)
    assert number(r"target perplexity ([\d.]+)", done.stdout) == pytest.approx(math.exp(total / count), rel=1e-3)
    data.write_text("abc\tcba\nno tab here\n")
    bad = groundup_cli("eval", f"--model={reversal}", f"--data={data}")
    assert bad.returncode == 2 and ":2:" in bad.stderr and "Traceback" not in bad.stderr


def test_bert_eval_reports_pseudo_perplexity_and_masked_accuracy(bert, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question. Whether tis nobler in the mind to suffer "
                    "the slings and arrows of outrageous fortune.")
    done = groundup_cli("eval", f"--model={bert}", f"--data={data}", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    model, tok = load(bert)
    ids, width = tok.encode(data.read_text()), model.config.block_size - 2
    assert len(ids) > width  # two windows
    nll, hits = [], 0
    with torch.no_grad():
        for w in range(0, len(ids), width):
            window = [tok.cls_id, *ids[w : w + width], tok.sep_id]
            for i in range(1, len(window) - 1):
                masked = window[:i] + [tok.mask_id] + window[i + 1 :]
                logp = model(torch.tensor([masked])).mlm_logits[0, i].log_softmax(-1)
                nll.append(-float(logp[window[i]]))
                hits += int(logp.argmax()) == window[i]
    assert f"{len(ids)} tokens, each masked alone" in done.stdout
    assert number(r"loss ([\d.]+) nats", done.stdout) == pytest.approx(sum(nll) / len(nll), abs=1e-4)
    assert number(r"pseudo-perplexity ([\d.]+)", done.stdout) == pytest.approx(math.exp(sum(nll) / len(nll)),
                                                                               rel=1e-3)
    assert number(r"masked-token accuracy ([\d.]+)%", done.stdout) == pytest.approx(100 * hits / len(nll), abs=0.01)


# --- commands that cannot apply ----------------------------------------------------------------------------------
@pytest.mark.parametrize("which, args, names", [
    ("bert", ["generate", "--prompt=hello"], ["arch='encoder'", "groundup eval", "groundup embed"]),
    ("bert", ["chat", "--message=hello"], ["arch='encoder'", "groundup eval"]),
    ("reversal", ["chat", "--message=hello"], ["arch='seq2seq'", "groundup generate"]),
    ("learned", ["generate", "--prompt=To", "--num_beams=2"], ["--num_beams=2", "encoder-decoder", "--temperature 0"]),
])
def test_a_command_that_cannot_apply_says_so_in_one_line(request, which, args, names):
    done = groundup_cli(*args, f"--model={request.getfixturevalue(which)}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and all(n in errors[0] for n in names), done.stderr
    assert done.stdout == ""


# --- decoders at the end of their context ------------------------------------------------------------------------
def test_learned_positions_stop_at_the_context_and_say_so(learned):
    done = groundup_cli("generate", f"--model={learned}", "--prompt=To be", "--max_new_tokens=100", "--seed=1")
    assert done.returncode == 0, done.stderr
    assert "stopped after 27 of 100 tokens: the model's context is 32 (learned positions)" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stdout) == len("To be") + 27 + 1  # char tokens + "\n"


def test_rope_generates_every_requested_token_past_its_context(rope):
    done = groundup_cli("generate", f"--model={rope}", "--prompt=To be", "--max_new_tokens=100", "--seed=1")
    assert done.returncode == 0, done.stderr
    assert "stopped" not in done.stderr and len(done.stdout) == len("To be") + 100 + 1


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_the_sliding_window_is_the_model_on_the_last_block_size_tokens(pos):
    """Each token past the context is the model's argmax on the last block_size tokens (nanoGPT's crop), for
    left-padded batch rows as for a row alone. The weights are drawn large (std 2 / sqrt(fan_in)) so that the
    next token depends on the whole window: a window one token shorter or longer would change the output."""
    torch.manual_seed(0)
    model = build_model("gpt-tiny", pos=pos, n_layer=2, d_model=32, n_head=4, block_size=12, vocab_size=20,
                        tie_embeddings=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 / p.shape[-1] ** 0.5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLimitWarning)
        out = generate(model, prompts, GenerationConfig(max_new_tokens=30, temperature=0))

    def cropped(prompt: list[int], crop: int) -> list[int]:
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(30):
                seq.append(int(model(torch.tensor([seq[-crop:]]))[0, -1].argmax()))
        return seq[len(prompt) :]

    for prompt, row in zip(prompts, out, strict=True):
        assert row == cropped(prompt, 12)
        assert row != cropped(prompt, 11) and row != cropped(prompt, 100)  # the window's size shows in the output


def test_learned_positions_warn_in_the_library_too():
    torch.manual_seed(0)
    model = build_model("gpt-tiny", n_layer=1, d_model=32, n_head=4, block_size=12, vocab_size=20).eval()
    with pytest.warns(ContextLimitWarning, match="stopped after 9 of 30 tokens"):
        out = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=30, temperature=0))
    assert len(out[0]) == 9
