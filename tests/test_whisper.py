"""Whisper: the model against CTranslate2 (faster-whisper's runtime) on the real tiny.en weights, the decoding rules
on hand-made logits, the cache and batching against recomputation, long-form and multilingual transcription."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from groundup.audio import load_audio, log_mel_spectrogram, pad_or_trim
from groundup.eval.wer import read_sphinx_transcription, word_error_rate
from groundup.interop.ctranslate2 import ct2_arrays, load_ct2_whisper, read_model_bin, save_ct2_whisper
from groundup.models.whisper import Whisper, whisper_preset
from groundup.speech import PACKAGED_WHISPER, TranscribeOptions, load_whisper, transcribe
from groundup.speech.decode import decode_beam, decode_sampling, decoding_rules
from groundup.speech.rules import Rules, apply_rules

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
WAVS = sorted(LIBRIVOX.glob("*.wav"))
NEG = float("-inf")


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_whisper("whisper-tiny.en")


@pytest.fixture(scope="module")
def ct2_tiny():
    import ctranslate2

    folder = load_ct2_folder()
    return ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)


def load_ct2_folder() -> Path:
    from groundup.speech import _packaged_parts

    assert PACKAGED_WHISPER["whisper-tiny.en"]
    return _packaged_parts("whisper-tiny.en")[0].parent


@pytest.fixture(scope="module")
def mels():
    return torch.stack([log_mel_spectrogram(pad_or_trim(load_audio(f))) for f in WAVS[:3]])  # (3, 80, 3000)


def storage(x: torch.Tensor):
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(x.numpy()))


@pytest.mark.real_weights
def test_encoder_equals_ctranslate2(tiny, ct2_tiny, mels):
    model, _ = tiny
    with torch.no_grad():
        ours = model.encode(mels)
    theirs = torch.from_numpy(np.array(ct2_tiny.encode(storage(mels), to_cpu=True)))
    assert ours.shape == theirs.shape == (3, 1500, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)


@pytest.mark.real_weights
@pytest.mark.parametrize("timestamps", [False, True])
def test_greedy_and_beam_tokens_equal_ctranslate2(tiny, ct2_tiny, mels, timestamps):
    model, tok = tiny
    prompt = tok.sot_sequence(None, "transcribe", timestamps=timestamps)
    rules = decoding_rules(model, tok, timestamps)
    with torch.no_grad():
        memory = model.encode(mels)
    for beam in (1, 5):
        theirs = ct2_tiny.generate(storage(mels), [prompt] * 3, beam_size=beam, suppress_blank=True,
                                   suppress_tokens=[-1], max_initial_timestamp_index=50, return_no_speech_prob=True)
        if beam == 1:
            ours = decode_sampling(model, tok, memory, [prompt] * 3, rules)
            for o, t in zip(ours, theirs, strict=True):
                assert o.no_speech_prob == pytest.approx(t.no_speech_prob, abs=1e-4)
        else:
            ours = decode_beam(model, tok, memory, [prompt] * 3, rules, beam_size=5)
        assert [o.tokens for o in ours] == [t.sequences_ids[0] for t in theirs]
    if timestamps:  # a timestamp opens and closes each window's text
        assert all(o.tokens[0] >= tok.timestamp_begin and o.tokens[-1] >= tok.timestamp_begin for o in ours)


@pytest.mark.real_weights
def test_beam_of_one_is_greedy(tiny, mels):
    model, tok = tiny
    prompt = tok.sot_sequence(None, "transcribe", timestamps=True)
    rules = decoding_rules(model, tok, True)
    with torch.no_grad():
        memory = model.encode(mels)
    greedy = decode_sampling(model, tok, memory, [prompt] * 3, rules)
    beam = decode_beam(model, tok, memory, [prompt] * 3, rules, beam_size=1)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]
    assert [g.sum_logprob for g in greedy] == pytest.approx([b.sum_logprob for b in beam], abs=1e-4)


def micro(seed: int = 0, **overrides) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(whisper_preset("whisper-micro", **overrides)).eval()
    with torch.no_grad():  # a random model's logits are flat; larger weights make the comparisons meaningful
        for p in model.parameters():
            p.mul_(8.0) if p.dim() >= 2 else None
    return model


def test_cached_decoding_equals_recomputation():
    model = micro()
    mel = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, 51000, (2, 12))
    with torch.no_grad():
        memory = model.encode(mel)
        full = model.logits(tokens, memory)  # (2, 12, V)
        cache, kv = model.new_cache(2, 16), model.memory_kv(memory)
        steps = [model.logits(tokens[:, :5], kv, cache, 0)]
        steps += [model.logits(tokens[:, t:t + 1], kv, cache, t) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_left_padded_rows_decode_as_if_alone():
    """Prompts of different lengths in one batch (previous text): each row's tokens as when decoded alone."""
    from groundup.tokenizer_whisper import WhisperTokenizer

    tok = WhisperTokenizer.from_dir(load_ct2_folder())
    model = micro(n_vocab=51864)
    mel = torch.randn(2, 80, 3000)
    rules = decoding_rules(model, tok, timestamps=True)
    prompts = [[tok.sot_prev, 440, 3290, 318, tok.sot], [tok.sot]]
    with torch.no_grad():
        memory = model.encode(mel)
        together = decode_sampling(model, tok, memory, prompts, rules, sample_len=12)
        alone = [decode_sampling(model, tok, memory[i:i + 1], [p], rules, sample_len=12)[0]
                 for i, p in enumerate(prompts)]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert len(together[0].tokens) > 3  # decoded something, not an immediate end
    assert [r.sum_logprob for r in together] == pytest.approx([r.sum_logprob for r in alone], abs=1e-3)


# --- the rules on hand-made logits: text 0-4, end-of-text 5, specials 6-9, timestamps 10-19 ---------------------
TEXT = [0, 1, 2, 4, 5]  # 3 is a suppressed symbol; 5 (end-of-text) closes the text at any point


def rules(max_initial: int | None = 2) -> Rules:
    return Rules(suppress=torch.tensor([3, 6, 7, 8]), begin_suppress=torch.tensor([4, 5]), eot=5, timestamp_begin=10,
                 no_timestamps=9, max_initial_timestamp=max_initial)


def allowed(sampled: list[int], logits: torch.Tensor | None = None, r: Rules | None = None) -> list[int]:
    if logits is None:  # text far likelier than any timestamp, so the mass rule stays out of the way
        logits = torch.zeros(1, 20)
        logits[0, :10] = 3.0
    out = apply_rules(logits, torch.tensor([sampled], dtype=torch.long).view(1, len(sampled)), r or rules())
    return [i for i in range(20) if out[0, i] > NEG]


def test_first_token_is_an_early_timestamp():
    assert allowed([]) == [10, 11, 12]  # <|0.00|> .. max_initial_timestamp; no text, blank or end first
    assert allowed([], r=rules(None)) == list(range(10, 20))


def test_timestamps_come_in_pairs_and_never_decrease():
    assert allowed([11]) == TEXT  # after the opening timestamp: text
    assert allowed([11, 0]) == TEXT + list(range(12, 20))  # more text, or a closing timestamp after the opening
    assert allowed([11, 0, 14]) == [5, *range(14, 20)]  # after a closing one: the end, or an opening one >= it
    assert allowed([11, 0, 14, 14]) == TEXT  # a pair just closed: text
    assert allowed([11, 0, 14, 14, 1]) == TEXT + list(range(15, 20))  # every segment lasts at least one step


def test_timestamps_win_when_their_mass_beats_every_text_token():
    logits = torch.zeros(1, 20)
    logits[0, 0] = 2.0  # the best text token weighs e^2 = 7.4; the 8 allowed timestamps 12-19 8 e^0.5 = 13.2
    logits[0, 10:] = 0.5
    assert allowed([11, 0], logits) == list(range(12, 20))
    logits[0, 10:] = -1.0  # now 8 e^-1 = 2.9 together: text stays possible
    assert allowed([11, 0], logits) == TEXT + list(range(12, 20))


def test_without_timestamps_only_suppression_applies():
    r = Rules(suppress=torch.tensor([3, 6, 7, 8]), begin_suppress=torch.tensor([4, 5]), eot=5, timestamp_begin=None,
              no_timestamps=9)
    assert allowed([], r=r) == [0, 1, 2, *range(9, 20)]  # no blank or end first
    assert allowed([0], r=r) == TEXT + list(range(9, 20))


# --- formats and key maps ---------------------------------------------------------------------------------------
def test_ct2_file_round_trips_and_ctranslate2_runs_it(tmp_path):
    import ctranslate2

    model = micro(n_vocab=51864)
    folder = save_ct2_whisper(model, tmp_path / "micro", dtype=np.float32,
                              vocabulary=load_ct2_folder() / "vocabulary.txt")
    back = load_ct2_whisper(folder)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    _, arrays = read_model_bin([folder / "model.bin"])
    assert set(ct2_arrays(model)) <= set(arrays)
    mel = torch.randn(1, 80, 3000)
    theirs = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    with torch.no_grad():
        torch.testing.assert_close(model.encode(mel), torch.from_numpy(np.array(theirs.encode(storage(mel)))),
                                   atol=1e-3, rtol=1e-4)


def test_truncated_model_bin_is_refused(tmp_path):
    data = (load_ct2_folder() / "model.bin").read_bytes()[:4096]
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(ValueError, match="truncated"):
        load_ct2_whisper(tmp_path)


# --- transcription --------------------------------------------------------------------------------------------
@pytest.mark.real_weights
def test_silence_transcribes_to_nothing(tiny):
    model, tok = tiny
    (result,) = transcribe(model, tok, [np.zeros(16000 * 5, dtype=np.float32)])
    assert result.text == "" and result.segments == []


@pytest.mark.real_weights
def test_long_form_timestamps_increase_and_batch_equals_one_by_one(tiny):
    """Every LibriVox utterance twice with pauses (~55 s, two windows and more): the text in order with
    increasing segment times, and the same transcript in a batch beside a short file as alone."""
    model, tok = tiny
    refs = read_sphinx_transcription(LIBRIVOX / "transcription")
    gap = np.zeros(8000, dtype=np.float32)
    clips = [load_audio(f) for f in WAVS]
    long = np.concatenate([x for c in clips + clips for x in (c, gap)])
    options = TranscribeOptions(beam_size=1)
    long_alone, = transcribe(model, tok, [long], options)
    together = transcribe(model, tok, [clips[1], long], options)
    assert together[1].text == long_alone.text
    assert together[0].text == transcribe(model, tok, [clips[1]], options)[0].text
    starts = [s.start for s in long_alone.segments]
    assert long_alone.duration > 50 and long_alone.segments[-1].end > 40
    assert all(s.start < s.end for s in long_alone.segments)
    assert all(b.start >= a.end - 1e-6 for a, b in zip(long_alone.segments, long_alone.segments[1:], strict=False))
    assert starts == sorted(starts)
    reference = " ".join(refs[f.stem] for f in WAVS + WAVS)
    assert word_error_rate([reference], [long_alone.text]) < 0.15


def espeak(text: str, voice: str, path: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


@pytest.mark.real_weights
def test_multilingual_base_detects_language_and_translates(tmp_path):
    model, tok = load_whisper("whisper-base")
    assert tok.multilingual and model.config.n_audio_layer == 6
    # synthetic speech, which Whisper hears less well than a person: a sentence base gets right
    german = espeak("Ich habe heute keine Zeit, weil ich arbeiten muss.", "de", tmp_path / "de.wav")
    english = load_audio(WAVS[1])
    detected = transcribe(model, tok, [german, english], TranscribeOptions(beam_size=1))
    assert [t.language for t in detected] == ["de", "en"]
    assert "keine zeit" in detected[0].text.lower() and "young man" in detected[1].text.lower()
    (translated,) = transcribe(model, tok, [german], TranscribeOptions(task="translate", temperatures=(0.0,)))
    assert translated.language == "de" and "i have" in translated.text.lower() and "time" in translated.text.lower()
    with pytest.raises(ValueError, match="xx"):
        transcribe(model, tok, [english], TranscribeOptions(language="xx"))


@pytest.mark.real_weights
def test_english_only_model_refuses_translate(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="English-only"):
        transcribe(model, tok, [np.zeros(16000, dtype=np.float32)], TranscribeOptions(task="translate"))


def test_rows_sharing_a_memory_attend_as_if_it_were_repeated():
    from groundup.nn import attend

    q, k, v = torch.randn(6, 4, 3, 16), torch.randn(2, 4, 50, 16), torch.randn(2, 4, 50, 16)
    repeated = attend(q, k.repeat_interleave(3, dim=0), v.repeat_interleave(3, dim=0))
    torch.testing.assert_close(attend(q, k, v), repeated, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divide"):
        attend(q[:5], k, v)


@pytest.mark.real_weights
def test_decoding_layout_gives_the_same_tokens(tiny, mels):
    import copy

    from groundup.speech import pack_for_decoding

    model, tok = tiny
    packed = pack_for_decoding(copy.deepcopy(model))
    assert type(packed.lm_head) is not torch.nn.Linear  # the layout is in place
    prompt = tok.sot_sequence(None, "transcribe", timestamps=True)
    with torch.no_grad():
        memory = model.encode(mels)
        plain = decode_beam(model, tok, memory, [prompt] * 3, decoding_rules(model, tok, True))
        fast = decode_beam(packed, tok, memory, [prompt] * 3, decoding_rules(packed, tok, True))
    assert [p.tokens for p in plain] == [f.tokens for f in fast]
