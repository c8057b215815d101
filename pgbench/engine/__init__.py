"""The engine: sampling, token log-probs (scoring), the vLLM backend and greedy evaluation."""
