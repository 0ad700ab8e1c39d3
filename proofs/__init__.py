"""proofs: the Claim model, SymPy derivations, the catalogue of the seeds' claims and LaTeX."""
