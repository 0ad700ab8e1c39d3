"""Attention implementations the validate battery is tested on: faulty ones (mutants) that it must
fail with their fault named, and correct ones, written differently, that it must pass."""
