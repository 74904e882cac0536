"""Corpus reading, tokenizer training and token files."""
