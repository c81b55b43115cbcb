"""Inference backends: each provides a batch source and one engine per local device."""
