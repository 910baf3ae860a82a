"""Word error rate: the word-level edit distance, the corpus WER, the English normaliser and the Sphinx
transcription reader. Expected values are worked out by hand in the comments."""

import functools
import random
from pathlib import Path

import pytest

from groundup.eval.wer import normalize_english, read_sphinx_transcription, word_error_rate, word_errors

SPHINX = Path("/usr/share/pocketsphinx/test/data/librivox/transcription")


# --- word_errors ---------------------------------------------------------------------------------------------

def test_classic_substitution_and_deletion():
    # the=the cat=cat sat->sit (1 sub) on=on the->(deleted) (1 del) mat=mat: 2 errors over 6 reference words
    assert word_errors("the cat sat on the mat", "the cat sit on mat") == (2, 6)


def test_insertions_only():
    # a [x] b c [y]: two inserted words, nothing else changes; 3 reference words
    assert word_errors("a b c", "a x b c y") == (2, 3)


def test_identical_and_empty_sides():
    assert word_errors("a b c", "a b c") == (0, 3)
    assert word_errors("a b c", "") == (3, 3)  # three deletions
    assert word_errors("", "a b") == (2, 0)  # two insertions, no reference words
    assert word_errors("", "") == (0, 0)


def test_swap_is_two_edits_not_one():
    # no transpositions in Levenshtein: "a b" -> "b a" is two substitutions (or a deletion plus an insertion)
    assert word_errors("a b", "b a") == (2, 2)


def test_three_edits():
    # i=i love->loved new->york york->city: 3 substitutions; 2 edits can't do it (a deletion plus an insertion
    # leaves "love" unchanged, two substitutions leave a third position differing)
    assert word_errors("i love new york", "i loved york city") == (3, 4)


def test_whitespace_is_only_a_separator():
    assert word_errors("  the   cat\tsat ", "the cat sat") == (0, 3)


def test_against_a_recursive_edit_distance():
    # an independent top-down definition of the same distance, on small random word lists
    def reference_distance(a, b):
        @functools.cache
        def d(i, j):
            if i == 0:
                return j
            if j == 0:
                return i
            return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        return d(len(a), len(b))

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert word_errors(" ".join(a), " ".join(b)) == (reference_distance(a, b), len(a))


# --- word_error_rate -----------------------------------------------------------------------------------------

def test_empty_hypothesis_is_wer_one():
    # three deletions over three reference words
    assert word_error_rate(["the cat sat"], [""]) == 1.0


def test_wer_can_exceed_one():
    # one substitution plus two insertions over one reference word
    assert word_error_rate(["yes"], ["no no no"]) == 3.0


def test_corpus_wer_weights_by_reference_length():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello"]
    # utterance 1: 2 errors / 6 words; utterance 2: "world" deleted, 1 error / 2 words
    # corpus: (2 + 1) / (6 + 2) = 3/8 = 0.375; the mean of per-utterance rates would be (1/3 + 1/2) / 2 = 0.41666...
    assert word_error_rate(refs, hyps) == pytest.approx(0.375)
    assert word_error_rate(refs, hyps) != pytest.approx((2 / 6 + 1 / 2) / 2)


def test_case_and_punctuation_give_wer_zero():
    refs = ["He was not an ill-disposed young man.", "Mr. Dashwood, 21 years!"]
    hyps = ["he was not an ill disposed young man", "mister dashwood twenty one years"]
    assert word_error_rate(refs, hyps) == 0.0


def test_normalize_none_compares_as_given():
    # without normalisation "Hello," != "hello" and "World!" != "world": 2 substitutions / 2 words
    assert word_error_rate(["Hello, World!"], ["hello world"], normalize=None) == 1.0
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0


def test_custom_normalizer_is_applied_to_both_sides():
    assert word_error_rate(["A B"], ["a b"], normalize=str.lower) == 0.0


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_no_reference_words_is_an_error():
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([], [])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["", "  "], ["a", ""])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["[noise] (laughs)"], ["a"])  # empty once the bracketed spans are removed


# --- normalize_english ---------------------------------------------------------------------------------------

def test_titles_and_numbers_meet_in_the_middle():
    expected = "mister dashwood 21 years"
    assert normalize_english("Mr. Dashwood, 21 years") == expected
    assert normalize_english("mister dashwood twenty one years") == expected


def test_case_and_punctuation():
    assert normalize_english("Hello, World!") == "hello world"
    assert normalize_english("  Hello ,   World ... ") == "hello world"


def test_bracketed_spans_removed():
    assert normalize_english("hello [noise] there (laughs) <unk> friend") == "hello there friend"
    assert normalize_english("[inaudible]") == ""


@pytest.mark.parametrize("text, expected", [
    ("one hundred and five", "105"),
    ("twenty one", "21"),
    ("twenty-one", "21"),
    ("two thousand and twenty one", "2021"),
    ("one million two hundred thousand and three", "1200003"),
    ("a hundred days", "100 days"),
    ("nineteen ninety nine", "1999"),  # two two-digit numbers read as a year
    ("twenty twenty", "2020"),
    ("eighteen hundred and twelve", "1812"),
    ("one two three", "1 2 3"),  # single digits stay separate
    ("zero", "0"),
    ("first", "first"),  # ordinals stay words
    ("3rd", "3rd"),
    ("21", "21"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("the end.", "the end"),
    ("and one hundred and the rest", "and 100 and the rest"),  # "and" outside a number stays
    ("one", "1"),
])
def test_numbers(text, expected):
    assert normalize_english(text) == expected


def test_percent_both_ways():
    assert normalize_english("21%") == "21 percent"
    assert normalize_english("twenty one percent") == "21 percent"
    assert normalize_english("twenty one per cent") == "21 percent"


@pytest.mark.parametrize("text, expected", [
    ("Mrs. Jennings", "missus jennings"),
    ("Dr Smith", "doctor smith"),
    ("St. Paul", "saint paul"),
    ("mister john dashwood", "mister john dashwood"),
])
def test_titles(text, expected):
    assert normalize_english(text) == expected


def test_apostrophes_and_hyphens():
    assert normalize_english("Don't") == "dont"
    assert normalize_english("don\u2019t") == "dont"  # curly apostrophe
    assert normalize_english("Dashwood's 'quoted'") == "dashwoods quoted"
    assert normalize_english("ill-disposed cold-hearted") == "ill disposed cold hearted"


def test_non_ascii_letters_kept():
    assert normalize_english("Café Noël, naïve") == "café noël naïve"
    assert normalize_english("\uff28\uff49") == "hi"  # full-width letters fold under NFKC


def test_normalizer_is_idempotent():
    for text in ["Mr. Dashwood, 21 years", "nineteen ninety nine", "one hundred and five", "21%", "Don't!"]:
        once = normalize_english(text)
        assert normalize_english(once) == once


# --- read_sphinx_transcription -------------------------------------------------------------------------------

def test_real_sphinx_transcription():
    refs = read_sphinx_transcription(SPHINX)
    assert len(refs) == 5
    assert list(refs)[0] == "sense_and_sensibility_01_austen_64kb-0870"
    assert refs["sense_and_sensibility_01_austen_64kb-0880"] == "he was not an ill disposed young man"
    assert refs["sense_and_sensibility_01_austen_64kb-0870"].startswith("and mister john dashwood had then")
    for text in refs.values():
        assert "<s>" not in text and "</s>" not in text and "(" not in text
        assert normalize_english(text) == text  # already lowercase, unpunctuated, no number words
    # scored against itself, the corpus has no errors
    assert word_error_rate(list(refs.values()), list(refs.values())) == 0.0


def test_sphinx_reader_on_a_small_file(tmp_path):
    path = tmp_path / "transcription"
    path.write_text("<s> hello world </s> (utt-1)\n\n<s>  good  bye </s>   (utt-2)\nno markers (utt-3)\n",
                    encoding="utf-8")
    assert read_sphinx_transcription(path) == {"utt-1": "hello world", "utt-2": "good bye", "utt-3": "no markers"}


def test_sphinx_reader_rejects_a_line_without_fileid(tmp_path):
    path = tmp_path / "transcription"
    path.write_text("<s> hello </s> (a)\n<s> no id here </s>\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        read_sphinx_transcription(path)


def test_sphinx_reader_rejects_a_repeated_fileid(tmp_path):
    path = tmp_path / "transcription"
    path.write_text("<s> a </s> (x)\n<s> b </s> (x)\n", encoding="utf-8")
    with pytest.raises(ValueError, match="twice"):
        read_sphinx_transcription(path)
