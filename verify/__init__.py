"""verify: Monte Carlo experiments, cross-backend checks, the validate battery and the CLI."""
