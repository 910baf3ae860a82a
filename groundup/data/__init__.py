"""Corpus -> tokens -> batches. Every `get_batch(split, batch_size, generator)` draws its
randomness only from the given torch.Generator, so a saved generator state resumes exactly."""

from groundup.lazy import lazy_exports

__all__ = lazy_exports(__name__, {
    ".arithmetic": "arithmetic_problem exact_match make_arithmetic_splits number_to_words",
    ".augment": "augment_records random_delete random_swap synonym_replace typo_noise",
    ".clean": "CleanConfig CleanReport clean_dataset clean_jsonl scrub_pii",
    ".image_text": "CAPTION_TEMPLATES FASHION_CLASSES ImageTextData caption_pairs emoji_pairs fashion_captions "
                   "fashion_mnist read_idx split_by_class",
    ".images": "ImageClassData LabelledImages image_source",
    ".corpus": "read_text_corpus shakespeare_path",
    ".instruct": "DEFAULT_SEPARATOR Example InstructData InstructFormatError load_instructions parse_instructions "
                 "write_jsonl",
    ".lm": "LMData prepare_lm_data",
    ".mlm": "MLMData mask_tokens split_documents",
    ".seq2seq": "Seq2SeqData SymbolVocab char_vocab reversal_pairs",
})
