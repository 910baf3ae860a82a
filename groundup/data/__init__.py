"""Corpus -> tokens -> batches. Every `get_batch(split, batch_size, generator)` draws its
randomness only from the given torch.Generator, so a saved generator state resumes exactly."""

from groundup.data.corpus import read_text_corpus, shakespeare_path
from groundup.data.lm import LMData, prepare_lm_data
from groundup.data.mlm import MLMData, mask_tokens, split_documents
from groundup.data.seq2seq import Seq2SeqData, SymbolVocab, char_vocab, reversal_pairs

__all__ = [
    "LMData", "MLMData", "Seq2SeqData", "SymbolVocab", "char_vocab", "mask_tokens",
    "prepare_lm_data", "read_text_corpus", "reversal_pairs", "shakespeare_path", "split_documents",
]
