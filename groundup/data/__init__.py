"""Corpus -> tokens -> batches. Every `get_batch(split, batch_size, generator)` draws its
randomness only from the given torch.Generator, so a saved generator state resumes exactly."""

from groundup.data.arithmetic import arithmetic_problem, exact_match, make_arithmetic_splits, number_to_words
from groundup.data.augment import augment_records, random_delete, random_swap, synonym_replace, typo_noise
from groundup.data.clean import CleanConfig, CleanReport, clean_dataset, clean_jsonl, scrub_pii
from groundup.data.corpus import read_text_corpus, shakespeare_path
from groundup.data.instruct import (
    DEFAULT_SEPARATOR,
    Example,
    InstructData,
    InstructFormatError,
    load_instructions,
    parse_instructions,
    write_jsonl,
)
from groundup.data.lm import LMData, prepare_lm_data
from groundup.data.mlm import MLMData, mask_tokens, split_documents
from groundup.data.seq2seq import Seq2SeqData, SymbolVocab, char_vocab, reversal_pairs

__all__ = [
    "arithmetic_problem", "exact_match", "make_arithmetic_splits", "number_to_words", "augment_records",
    "random_delete", "random_swap", "synonym_replace", "typo_noise", "CleanConfig", "CleanReport", "clean_dataset",
    "clean_jsonl", "scrub_pii", "DEFAULT_SEPARATOR", "Example", "InstructData", "InstructFormatError",
    "load_instructions", "parse_instructions", "write_jsonl",
    "LMData", "MLMData", "Seq2SeqData", "SymbolVocab", "char_vocab", "mask_tokens",
    "prepare_lm_data", "read_text_corpus", "reversal_pairs", "shakespeare_path", "split_documents",
]
