"""fakeai: an OpenAI-compatible LLM API server that simulates inference without a GPU.

Exact token counts, exact token timing, real API shapes, fast. See README.md.
"""
__version__ = "0.1.0"

from fakeai.config import AppConfig  # noqa: E402

__all__ = ["AppConfig", "__version__"]
