"""Dead letters: jobs that spent their retry budget, for an operator to inspect and replay."""
