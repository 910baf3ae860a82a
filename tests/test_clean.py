"""Cleaning: exact + MinHash/LSH near duplicates, PII scrubbing (Luhn), filters, and the report."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from groundup.data.clean import (
    CleanConfig,
    clean_dataset,
    clean_jsonl,
    estimate_jaccard,
    hash_params,
    jaccard,
    lsh_bands,
    luhn_valid,
    minhash,
    scrub_pii,
    shingles,
)
from groundup.data.instruct import DEFAULT_SEPARATOR
from groundup.tokenizer import char_tokenizer

WORDS = [f"w{i}" for i in range(400)]


def text_of(words: list[str]) -> str:
    return " ".join(words)


# --- duplicates ------------------------------------------------------------------------------------
def test_exact_duplicates_ignore_case_and_whitespace():
    records = [{"text": "Hello   World"}, {"text": "other"}, {"text": " hello world\n"}, {"text": "HELLO WORLD"}]
    kept, report = clean_dataset(records, ["text"])
    assert [r["text"] for r in kept] == ["Hello   World", "other"]
    assert report.removed == {"exact_duplicate": [3, 4]}
    assert report.details == {3: "duplicate of line 1", 4: "duplicate of line 1"}


def test_near_duplicates_by_constructed_jaccard():
    base = WORDS[:20]
    near = WORDS[:18] + ["x1", "x2"]  # unigram Jaccard 18/22 = 0.818
    far = WORDS[:15] + ["y1", "y2", "y3", "y4", "y5"]  # 15/25 = 0.6
    assert jaccard(shingles(text_of(base), 1), shingles(text_of(near), 1)) == pytest.approx(18 / 22)
    assert jaccard(shingles(text_of(base), 1), shingles(text_of(far), 1)) == pytest.approx(0.6)
    records = [{"text": text_of(w)} for w in (base, near, far)]
    kept, report = clean_dataset(records, ["text"], CleanConfig(shingle_size=1))
    assert [r["text"] for r in kept] == [text_of(base), text_of(far)]
    assert report.removed == {"near_duplicate": [2]} and report.details[2] == "near duplicate of line 1 (Jaccard 0.82)"
    kept, report = clean_dataset(records, ["text"], CleanConfig(shingle_size=1, near_dup_threshold=0.55))
    assert len(kept) == 1 and report.removed["near_duplicate"] == [2, 3]
    kept, report = clean_dataset(records, ["text"], CleanConfig(shingle_size=1, near_dup_threshold=0.9))
    assert len(kept) == 3 and report.removed == {}


def test_word_shingles_and_one_changed_word():
    a = WORDS[:40]
    b = a[:-1] + ["changed"]  # only the last 3-shingle differs: 37 shared of 39
    assert len(shingles(text_of(a))) == 38
    assert jaccard(shingles(text_of(a)), shingles(text_of(b))) == pytest.approx(37 / 39)
    assert shingles("Two words") == {"two words"} and shingles("...") == set()


def test_minhash_estimates_jaccard():
    a, b = hash_params(256, seed=0)
    rng = random.Random(0)
    for overlap in (10, 40, 70, 95):
        x = set(rng.sample(WORDS, 100))
        rest = [w for w in WORDS if w not in x]
        y = set(rng.sample(sorted(x), overlap)) | set(rng.sample(rest, 100 - overlap))
        est = estimate_jaccard(minhash(x, a, b), minhash(y, a, b))
        assert abs(est - jaccard(x, y)) < 0.1, (overlap, est, jaccard(x, y))
    sig = minhash({"a", "b"}, a, b)
    assert sig.shape == (256,) and sig.dtype == np.uint64
    np.testing.assert_array_equal(sig, minhash({"b", "a"}, *hash_params(256, seed=0)))  # deterministic


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_lsh_band_shape_keeps_pairs_at_threshold(threshold):
    bands, rows = lsh_bands(128, threshold)
    assert bands * rows <= 128
    assert 1 - (1 - threshold**rows) ** bands >= 0.99
    assert 1 - (1 - threshold ** (rows + 1)) ** (128 // (rows + 1)) < 0.99  # the most rows that does


def test_near_dedup_finds_every_planted_pair_and_is_deterministic():
    rng = random.Random(1)
    records, planted = [], []
    for i in range(60):
        words = rng.sample(WORDS, 30)
        records.append({"text": text_of(words)})
        if i % 3 == 0:  # a copy with one word replaced: 3-shingle Jaccard 25/31 ~ 0.81 or better
            words = list(words)
            words[rng.randrange(len(words))] = f"z{i}"
            records.append({"text": text_of(words)})
            planted.append(len(records))
    kept, report = clean_dataset(records, ["text"])
    assert report.removed == {"near_duplicate": planted}
    assert len(kept) == 60
    again, report2 = clean_dataset(records, ["text"])
    assert again == kept and report2 == report


# --- PII -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("number", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                    "5500 0000 0000 0004", "3782 822463 10005", "6011000990139424"])
def test_luhn_valid_cards_are_scrubbed(number):
    assert luhn_valid(number.replace(" ", "").replace("-", ""))
    assert scrub_pii(f"card: {number}.") == ("card: [CARD].", {"CARD": 1})


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "4111-1111-1111-1121", "1234567812345678"])
def test_luhn_invalid_numbers_are_left_alone(number):
    assert not luhn_valid(number.replace(" ", "").replace("-", ""))
    assert scrub_pii(f"order {number}") == (f"order {number}", {})


@pytest.mark.parametrize("phone", ["555-123-4567", "(555) 123-4567", "555.123.4567", "5551234567", "+1 555 123 4567",
                                   "+1 (555) 123-4567", "+44 20 7946 0958", "+49 30 1234567", "+33 1 23 45 67 89"])
def test_phone_numbers_are_scrubbed(phone):
    assert scrub_pii(f"call {phone} now") == ("call [PHONE] now", {"PHONE": 1})


@pytest.mark.parametrize("text", ["in 2023 we sold 12 cats", "version 1.2.3", "on 2023-01-15 at 10:30", "zip 94105",
                                  "costs $1,234.56", "pi is 3.14159265", "id 12345678901234567890123"])
def test_ordinary_numbers_are_not_pii(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize(("text", "scrubbed"), [
    ("ssn 123-45-6789.", "ssn [SSN]."), ("itin 912-70-1234", "itin [SSN]"), ("at 192.168.1.10.", "at [IP]."),
    ("to 8.8.8.8:53", "to [IP]:53"), ("ip 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip [IP]"),
    ("[2001:db8::1]:443", "[[IP]]:443"), ("::ffff:192.0.2.1", "[IP]"), ("10.0.0.1-10.0.0.5", "[IP]-[IP]"),
])
def test_ssns_and_ip_addresses_are_scrubbed(text, scrubbed):
    out, counts = scrub_pii(text)
    assert out == scrubbed and sum(counts.values()) == scrubbed.count("[") - scrubbed.count("[[")


@pytest.mark.parametrize("text", ["on 2024-01-15", "due 01-15-2024", "1.2.3.4-beta", "1.2.3.4-rc1", "1.2.3.4+build",
                                  "v1.2.3.4", "version 1.2.3.4", "pkg-1.2.3.4", "1.2.3.4.5", "999.1.1.1", "01.2.3.4",
                                  "000-12-3456", "123-00-4567", "at 10:30:45", "x[1::2]", "::1", "std::vector",
                                  "mac 00:1A:2B:3C:4D:5E"])
def test_dates_versions_and_lookalikes_are_not_ssns_or_ips(text):
    assert scrub_pii(text) == (text, {})


def test_emails_and_mixed_pii():
    text = "Mail jane.doe+news@mail.example.co.uk or call +1 555 123 4567; card 4111 1111 1111 1111."
    assert scrub_pii(text) == ("Mail [EMAIL] or call [PHONE]; card [CARD].", {"EMAIL": 1, "CARD": 1, "PHONE": 1})
    assert scrub_pii("not an email: a@b, x@y.") == ("not an email: a@b, x@y.", {})


# --- filters and the report ------------------------------------------------------------------------
def test_report_lists_everything_removed_and_changed():
    records = [
        {"prompt": "Email me at bob@example.com", "completion": "ok"},
        {"prompt": "a" + DEFAULT_SEPARATOR + "b", "completion": "c"},
        {"prompt": "hi", "completion": ""},
        {"prompt": "EMAIL ME AT carol@example.org", "completion": "ok"},  # duplicate after scrubbing
        {"prompt": "x" * 300, "completion": "y"},
        {"prompt": "Card 4111 1111 1111 1111 and 555-123-4567", "completion": "fine"},
    ]
    cfg = CleanConfig(min_chars=5, max_chars=200)
    kept, report = clean_dataset(records, ["prompt", "completion"], cfg)
    assert [r["prompt"] for r in kept] == ["Email me at [EMAIL]", "Card [CARD] and [PHONE]"]
    assert records[0]["prompt"] == "Email me at bob@example.com"  # inputs are not modified
    assert report.n_in == 6 and report.n_kept == 2
    assert report.removed == {"separator_in_prompt": [2], "rejected_by_finetune": [3], "length": [5],
                              "exact_duplicate": [4]}
    assert report.details[3] == "'completion' is empty (finetune would reject it)"
    assert report.details[5] == "302 chars > max_chars=200"
    assert report.details[4] == "duplicate of line 1"
    assert report.pii == {"EMAIL": 2, "CARD": 1, "PHONE": 1} and report.changed_lines == [1, 4, 6]
    summary = report.summary()
    assert "kept 2/6" in summary and "removed 1 length (lines [5])" in summary and "EMAIL" in summary


def test_token_length_filter_and_errors():
    tok = char_tokenizer(string.ascii_lowercase + " ")
    records = [{"text": "abc"}, {"text": "abcdefgh"}]
    kept, report = clean_dataset(records, ["text"], CleanConfig(max_tokens=5), tokenizer=tok)
    assert kept == [{"text": "abc"}] and report.details[2] == "8 tokens > max_tokens=5"
    with pytest.raises(ValueError, match="need a tokenizer"):
        clean_dataset(records, ["text"], CleanConfig(min_tokens=2))
    with pytest.raises(ValueError, match="line 2: field 'text' must be a string"):
        clean_dataset([{"text": "a"}, {"text": 3}], ["text"])
    with pytest.raises(ValueError, match="non-empty list of field names"):
        clean_dataset(records, "text")
    with pytest.raises(ValueError, match="near_dup_threshold=1.5"):
        CleanConfig(near_dup_threshold=1.5)


def test_clean_jsonl_keeps_file_line_numbers(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": "one two three"}), "", json.dumps({"text": "One  two three"}),
             json.dumps({"text": "call 555-123-4567"})]
    src.write_text("\n".join(lines) + "\n")
    report = clean_jsonl(src, tmp_path / "out.jsonl", ["text"])
    assert report.removed == {"exact_duplicate": [3]} and report.details[3] == "duplicate of line 1"
    assert report.changed_lines == [4]
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out == [{"text": "one two three"}, {"text": "call [PHONE]"}]
    src.write_text(lines[0] + "\n{bad\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        clean_jsonl(src, tmp_path / "out.jsonl", ["text"])
