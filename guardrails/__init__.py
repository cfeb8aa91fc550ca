"""The guardrails: the evaluator and its checks."""

from router.kernel_cache import configure

configure()
