"""The policy layer: API keys, rate limits, security checks, CORS, moderation, refusals, error injection.

`app.policy` is a core.Policy; the modules here are its parts (see core.py for the order of checks).
"""
from fakeai.policy.core import Policy

__all__ = ["Policy"]
