"""Faulty attention implementations (mutants) the validate battery must fail, each with the
diagnosis it must name, and correct ones it must pass."""
