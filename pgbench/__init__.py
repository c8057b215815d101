"""pgbench: which policy-gradient estimator should you use to fine-tune a language model?"""

__version__ = "0.1.0"
