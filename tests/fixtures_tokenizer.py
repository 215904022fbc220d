"""Tokenizer fixtures (tiny_tokenizer); filled by the tokenizer area."""
