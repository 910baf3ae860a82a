"""Augmentation: WordNet parsing and synonyms, deletion, swaps, typos; reproducible by seed."""

from __future__ import annotations

from collections import Counter

import pytest

from groundup.data.augment import (
    NEIGHBOURS,
    augment_records,
    one_word_synonyms,
    random_delete,
    random_swap,
    synonym_replace,
    typo_noise,
)
from groundup.data.wordnet import WORDNET_DIR, WordNet, load_wordnet

TEXT = "The quick brown fox jumps over the lazy dog while the happy children watch from the old bridge."


@pytest.fixture(scope="module")
def wn() -> WordNet:
    if not (WORDNET_DIR / "data.adj").is_file():
        pytest.fail("Debian wordnet-base is not installed: apt-get install wordnet-base (.ci/run does this)")
    return load_wordnet()


# --- WordNet ---------------------------------------------------------------------------------------
def test_wordnet_synonyms_of_known_words(wn):
    assert wn.synonyms("happy") == ["felicitous", "glad", "well-chosen"]
    assert {"speedy", "fast", "nimble"} <= set(wn.synonyms("quick"))
    assert "domestic dog" in wn.synonyms("dog", pos="n")  # multi-word lemmas use spaces
    glad = next(s for s in wn.synsets("happy") if "glad" in s.lemmas)
    assert glad.pos == "s" and glad.gloss.startswith("eagerly disposed to act")
    assert wn.synonyms("xyzzyqq") == [] and wn.synsets("Happy") == wn.synsets("happy")
    with pytest.raises(ValueError, match="pos='x'"):
        wn.synsets("happy", pos="x")


def test_wordnet_parser_on_a_tiny_database(tmp_path):
    header = "  1 This software and database is being provided\n"
    lines = ["{off} 00 a 02 cheerful 0 glad(p) 0 000 | full of cheer", "{off} 00 a 01 sad 0 000 | unhappy"]
    data, offsets = header, []
    for line in lines:  # a synset's offset is the byte position of its line
        offsets.append(len(data.encode()))
        data += line.format(off=f"{offsets[-1]:08d}") + "  \n"
    for name in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{name}").write_text(data if name == "adj" else header)
        (tmp_path / f"index.{name}").write_text(header)
    (tmp_path / "index.adj").write_text(
        header + f"cheerful a 1 0 1 0 {offsets[0]:08d}\nglad a 2 0 2 0 {offsets[0]:08d} {offsets[1]:08d}\n")
    tiny = WordNet(tmp_path)
    assert tiny.synonyms("glad") == ["cheerful", "sad"]  # the (p) marker is dropped
    assert [s.gloss for s in tiny.synsets("glad")] == ["full of cheer", "unhappy"]
    assert synonym_replace("Glad", p=1.0, seed=0, wordnet=tiny) in ("Cheerful", "Sad")


def test_missing_wordnet_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wordnet-base.*apt-get install wordnet-base"):
        WordNet(tmp_path)


# --- the four methods ------------------------------------------------------------------------------
def test_synonym_replacement_uses_wordnet(wn):
    outs = {synonym_replace("I am happy.", p=1.0, seed=s) for s in range(20)}
    assert outs == {f"I am {w}." for w in ("felicitous", "glad", "well-chosen")}  # stopwords 'I', 'am' stay
    assert synonym_replace("Happy!", p=1.0, seed=0) in ("Felicitous!", "Glad!", "Well-chosen!")  # case kept
    for word in ("quick", "lazy", "dog", "child", "old", "bridge", "watch"):
        for seed in range(3):
            assert synonym_replace(word, p=1.0, seed=seed) in wn.synonyms(word)
    assert synonym_replace("the of and", p=1.0, seed=0) == "the of and"  # stopwords are never replaced
    assert synonym_replace("children", p=1.0, seed=0) == "children"  # lemmas only: inflected forms stay
    assert synonym_replace(TEXT, p=0.2, seed=3) != TEXT


def test_synonyms_are_single_lowercase_words(wn):
    assert "Daniel Chester French" in wn.synonyms("french") and "true cat" in wn.synonyms("cat")
    for word in ("french", "cat", "dog", "bank", "water"):
        assert all(" " not in s and s.islower() for s in one_word_synonyms(word, wn))
    assert {synonym_replace("the french", p=1.0, seed=s) for s in range(10)} == {"the french"}  # none left


@pytest.mark.parametrize("fn", [random_delete, random_swap, typo_noise, synonym_replace])
def test_kept_spans_are_never_changed_and_line_breaks_stay(fn, wn):
    text = "Review: the quick brown fox jumps over the lazy dog\nSentiment:"
    keep = [(0, 7), (text.index("\n"), len(text)), (text.index("fox"), text.index("fox") + 3)]
    for seed in range(10):
        out = fn(text, 0.5, seed, keep=keep)
        assert out.startswith("Review: ") and out.endswith(" \nSentiment:"[1:]) and "fox" in out
        assert out.count("\n") == 1 and out != text


@pytest.mark.parametrize("fn", [random_delete, random_swap, typo_noise, synonym_replace])
def test_same_seed_same_output_different_seeds_differ(fn, wn):
    assert fn(TEXT, 0.2, 7) == fn(TEXT, 0.2, 7)
    outs = {fn(TEXT, 0.2, s) for s in range(10)}
    assert len(outs) >= 8 and TEXT not in outs


def test_random_delete_keeps_order_and_count():
    tokens = TEXT.split()
    for seed in range(10):
        out = random_delete(TEXT, p=0.2, seed=seed).split()
        assert len(out) == len(tokens) - round(0.2 * len(tokens))
        it = iter(tokens)
        assert all(t in it for t in out)  # a subsequence: order kept
    assert random_delete("one", p=1.0, seed=0) == "one"
    assert len(random_delete("a b c", p=1.0, seed=0).split()) == 1  # never deletes everything


def test_random_swap_is_a_permutation():
    for seed in range(10):
        out = random_swap(TEXT, p=0.1, seed=seed)
        assert Counter(out.split()) == Counter(TEXT.split()) and out != TEXT


def test_typo_noise_makes_one_keyboard_typo_per_chosen_word():
    words = TEXT.rstrip(".").split()
    for seed in range(20):
        out = typo_noise(TEXT, p=0.2, seed=seed).rstrip(".").split()
        assert len(out) == len(words)
        diffs = [(a, b) for a, b in zip(words, out, strict=True) if a != b]
        assert len(diffs) == round(0.2 * len(words))
        for a, b in diffs:
            if len(b) == len(a) - 1:  # drop
                assert any(a[:i] + a[i + 1:] == b for i in range(len(a)))
            elif sorted(a) == sorted(b):  # transposition of neighbours
                i = next(i for i in range(len(a)) if a[i] != b[i])
                assert b == a[:i] + a[i + 1] + a[i] + a[i + 2:]
            else:  # substitution by an adjacent key
                (i,) = [i for i in range(len(a)) if a[i] != b[i]]
                assert b[i].lower() in NEIGHBOURS[a[i].lower()]


def test_p_out_of_range():
    with pytest.raises(ValueError, match="p=1.5"):
        random_swap(TEXT, p=1.5)


# --- records ---------------------------------------------------------------------------------------
def test_augment_records_reproducible_with_report(wn):
    records = [{"prompt": TEXT, "completion": "x"}, {"prompt": "ok", "completion": "y"}]
    out, report = augment_records(records, "prompt", ["delete", "swap"], n_per_record=2, seed=1)
    again, _ = augment_records(records, "prompt", ["delete", "swap"], n_per_record=2, seed=1)
    other, _ = augment_records(records, "prompt", ["delete", "swap"], n_per_record=2, seed=2)
    assert out == again and out != other
    assert out[:2] == records
    copies = out[2:]
    assert [(c["augment_source"], c["augment_method"]) for c in copies] == [(0, "delete"), (0, "swap")]
    assert all(c["completion"] == "x" for c in copies)
    # "ok" has one token: deleting or swapping cannot change it; both copies are reported, not hidden
    assert report.skipped == [(1, "swap", "unchanged"), (1, "delete", "unchanged")]
    assert report.n_in == 2 and report.n_out == 4 and report.made == {"delete": 1, "swap": 1}
    only, _ = augment_records(records, "prompt", ["typo"], n_per_record=1, keep_original=False)
    assert [c["augment_method"] for c in only] == ["typo", "typo"] and only[1]["prompt"] in ("k", "o", "ko", "ik", "pk")


def test_augment_records_errors():
    with pytest.raises(ValueError, match="unknown: \\['shuffle'\\]"):
        augment_records([{"t": "a b"}], "t", ["shuffle"])
    with pytest.raises(ValueError, match="records\\[1\\]: field 't'"):
        augment_records([{"t": "a b"}, {"u": "c"}], "t", ["swap"])
