"""Model catalogue behind GET /v1/models and every request's `model` field.

Strategy: a static table of built-in models with real-world metadata (context
window, output cap, capabilities, list prices, cutoffs), held in one
insertion-ordered dict, so a lookup is a single dict probe. An id the table
does not know is created on first use (FakeAI's documented behaviour). Its
metadata is copied from a known model when the id is only a variant of one
(dated snapshot, other casing, org-prefixed or bare HF name, "ft:" fine-tune),
and otherwise inferred from the name by family rules. After that it is listed
like a built-in. The /v1/models payload dict is built once and kept until a
model is added. Writes are rare and hold a lock; reads take no lock.

Units: context_window and max_output_tokens count tokens (for dall-e and tts-1
they are the prompt limit in characters, which is how those APIs count).
max_output_tokens == 0 means the model emits no text tokens (embeddings,
rerankers, moderation, speech and image generation). `created` for OpenAI
models follows the public /v1/models listing as best known. For open models it
is the release date (plausible, not authoritative). Prices are USD per 1M text
tokens at standard list price.
"""
from __future__ import annotations

import calendar
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

DEFAULT_MODEL = "openai/gpt-oss-120b"

O200K = "o200k_base"
CL100K = "cl100k_base"

# kind: what the model does, for callers routing requests.
KINDS = ("chat", "completion", "embedding", "rerank", "moderation", "tts", "transcription", "image")


@dataclass(slots=True)
class ModelInfo:
    id: str
    created: int
    owned_by: str
    context_window: int
    max_output_tokens: int
    supports_vision: bool = False
    supports_audio: bool = False
    supports_tools: bool = True
    supports_reasoning: bool = False
    supports_json_schema: bool = True
    is_embedding: bool = False
    embedding_dimensions: int = 0
    encoding: str = CL100K
    pricing_input_per_million: float | None = None
    pricing_output_per_million: float | None = None
    training_cutoff: str | None = None
    parent: str | None = None
    kind: str = "chat"  # one of KINDS (an addition to the brief's field list)

    def to_openai(self) -> dict:
        if self.pricing_input_per_million is None and self.pricing_output_per_million is None:
            pricing = None
        else:
            pricing = {"input_per_million": self.pricing_input_per_million,
                       "output_per_million": self.pricing_output_per_million}
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "root": self.id,
            "parent": self.parent,
            "max_model_len": self.context_window,
            "permission": [],
            "metadata": {
                "kind": self.kind,
                "context_window": self.context_window,
                "max_output_tokens": self.max_output_tokens,
                "embedding_dimensions": self.embedding_dimensions,
                "capabilities": {
                    "vision": self.supports_vision,
                    "audio": self.supports_audio,
                    "tools": self.supports_tools,
                    "reasoning": self.supports_reasoning,
                    "json_schema": self.supports_json_schema,
                    "embeddings": self.is_embedding,
                },
                "pricing": pricing,
                "training_cutoff": self.training_cutoff,
            },
        }


# ----------------------------------------------------------------- built-ins

def _d(day: str) -> int:
    """'YYYY-MM-DD' -> unix seconds at 00:00 UTC."""
    return calendar.timegm(time.strptime(day, "%Y-%m-%d"))


def _embedding(id, created, owned_by, context, dims, price=None, encoding=CL100K, cutoff=None):
    return ModelInfo(id, created, owned_by, context, 0, supports_tools=False, supports_json_schema=False,
                     is_embedding=True, embedding_dimensions=dims, encoding=encoding,
                     pricing_input_per_million=price, pricing_output_per_million=None if price is None else 0.0,
                     training_cutoff=cutoff, kind="embedding")


def _service(id, created, owned_by, kind, context, max_output=0, **kw):
    """Non-chat endpoints: no tools, no structured output, no reasoning."""
    return ModelInfo(id, created, owned_by, context, max_output, supports_tools=False,
                     supports_json_schema=False, kind=kind, **kw)


def _builtins() -> tuple[ModelInfo, ...]:
    M = ModelInfo
    sys_ = "system"
    # Shorthand for the common OpenAI chat model: vision, tools, json_schema, o200k.
    def oai(id, created, ctx, out, pin, pout, cutoff, owned_by=sys_, **kw):
        kw.setdefault("supports_vision", True)
        kw.setdefault("encoding", O200K)
        return M(id, created, owned_by, ctx, out, pricing_input_per_million=pin,
                 pricing_output_per_million=pout, training_cutoff=cutoff, **kw)

    # Reasoning (o-series) models.
    def oser(id, created, ctx, out, pin, pout, cutoff, **kw):
        return oai(id, created, ctx, out, pin, pout, cutoff, supports_reasoning=True, **kw)

    # Open-weight models served by vLLM-style stacks: prices unknown, cl100k stand-in tokenizer,
    # json_schema via guided decoding. Output cap = a typical serving cap.
    def hf(id, created, ctx, out, cutoff=None, **kw):
        org = id.split("/", 1)[0].lower()
        return M(id, created, kw.pop("owned_by", org), ctx, out, training_cutoff=cutoff, **kw)

    audio_chat = dict(supports_vision=False, supports_audio=True, supports_json_schema=False)

    return (
        # --- OpenAI open-weight (plain chat models for FakeAI's purposes, per the docs) ---
        hf("openai/gpt-oss-120b", _d("2025-08-05"), 131_072, 131_072, "2024-06", encoding=O200K),
        hf("openai/gpt-oss-20b", _d("2025-08-05"), 131_072, 131_072, "2024-06", encoding=O200K),

        # --- DeepSeek (prices: DeepSeek API list prices for deepseek-chat / deepseek-reasoner) ---
        hf("deepseek-ai/DeepSeek-R1", _d("2025-01-20"), 131_072, 32_768, supports_reasoning=True,
           supports_tools=False, pricing_input_per_million=0.55, pricing_output_per_million=2.19),
        hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", _d("2025-01-20"), 131_072, 32_768,
           supports_reasoning=True, supports_tools=False),
        hf("deepseek-ai/DeepSeek-V3", _d("2024-12-26"), 131_072, 8_192,
           pricing_input_per_million=0.27, pricing_output_per_million=1.10),

        # --- OpenAI reasoning ---
        oser("o1", 1734375816, 200_000, 100_000, 15.00, 60.00, "2023-10"),
        oser("o1-mini", 1725649008, 128_000, 65_536, 1.10, 4.40, "2023-10",
             supports_vision=False, supports_tools=False, supports_json_schema=False),
        oser("o3", 1744225308, 200_000, 100_000, 2.00, 8.00, "2024-06"),
        oser("o3-mini", 1737146383, 200_000, 100_000, 1.10, 4.40, "2023-10", supports_vision=False),
        oser("o4-mini", 1744225351, 200_000, 100_000, 1.10, 4.40, "2024-06"),

        # --- OpenAI GPT-5 (reasoning models) ---
        oser("gpt-5", 1754425777, 400_000, 128_000, 1.25, 10.00, "2024-09"),
        oser("gpt-5-mini", 1754425928, 400_000, 128_000, 0.25, 2.00, "2024-05"),
        oser("gpt-5-nano", 1754426384, 400_000, 128_000, 0.05, 0.40, "2024-05"),

        # --- OpenAI GPT-4.1 / 4o ---
        oai("gpt-4.1", 1744316542, 1_047_576, 32_768, 2.00, 8.00, "2024-06"),
        oai("gpt-4.1-mini", 1744318173, 1_047_576, 32_768, 0.40, 1.60, "2024-06"),
        oai("gpt-4.1-nano", 1744321707, 1_047_576, 32_768, 0.10, 0.40, "2024-06"),
        oai("gpt-4o", 1715367049, 128_000, 16_384, 2.50, 10.00, "2023-10"),
        oai("gpt-4o-mini", 1721172741, 128_000, 16_384, 0.15, 0.60, "2023-10"),
        oai("chatgpt-4o-latest", 1723515131, 128_000, 16_384, 5.00, 15.00, "2023-10",
            supports_tools=False, supports_json_schema=False),
        # Audio models: text-token prices (audio tokens cost more).
        oai("gpt-4o-realtime-preview", 1727659998, 128_000, 4_096, 5.00, 20.00, "2023-10", **audio_chat),
        oai("gpt-4o-mini-realtime-preview", 1734387380, 128_000, 4_096, 0.60, 2.40, "2023-10", **audio_chat),
        oai("gpt-4o-audio-preview", 1727460443, 128_000, 16_384, 2.50, 10.00, "2023-10", **audio_chat),
        oai("gpt-4o-mini-audio-preview", 1734387424, 128_000, 16_384, 0.15, 0.60, "2023-10", **audio_chat),

        # --- OpenAI legacy (cl100k, no structured outputs) ---
        oai("gpt-4-turbo", 1712361441, 128_000, 4_096, 10.00, 30.00, "2023-12",
            encoding=CL100K, supports_json_schema=False),
        oai("gpt-4", 1687882411, 8_192, 8_192, 30.00, 60.00, "2021-09", owned_by="openai",
            encoding=CL100K, supports_vision=False, supports_json_schema=False),
        oai("gpt-3.5-turbo", 1677610602, 16_385, 4_096, 0.50, 1.50, "2021-09", owned_by="openai",
            encoding=CL100K, supports_vision=False, supports_json_schema=False),
        oai("gpt-3.5-turbo-instruct", 1692901427, 4_096, 4_096, 1.50, 2.00, "2021-09",
            encoding=CL100K, supports_vision=False, supports_tools=False, supports_json_schema=False,
            kind="completion"),

        # --- Embeddings ---
        _embedding("text-embedding-3-small", 1705948997, sys_, 8_191, 1536, 0.02),
        _embedding("text-embedding-3-large", 1705953180, sys_, 8_191, 3072, 0.13),
        _embedding("text-embedding-ada-002", 1671217299, "openai-internal", 8_191, 1536, 0.10),
        _embedding("sentence-transformers/all-mpnet-base-v2", _d("2021-08-30"), "sentence-transformers", 384, 768),
        _embedding("nvidia/nv-embedqa-e5-v5", _d("2024-07-01"), "nvidia", 512, 1024),
        _embedding("BAAI/bge-m3", _d("2024-01-30"), "baai", 8_192, 1024),

        # --- Moderation, speech, transcription, images ---
        _service("omni-moderation-latest", 1731689265, sys_, "moderation", 32_768, supports_vision=True,
                 encoding=O200K, pricing_input_per_million=0.0, pricing_output_per_million=0.0),
        _service("text-moderation-latest", 1690848000, sys_, "moderation", 32_768,
                 pricing_input_per_million=0.0, pricing_output_per_million=0.0),
        # tts-1 / whisper-1 / dall-e are billed per character / minute / image: no token price.
        _service("tts-1", 1681940951, "openai-internal", "tts", 4_096, supports_audio=True),
        _service("tts-1-hd", 1699046015, sys_, "tts", 4_096, supports_audio=True),
        _service("gpt-4o-mini-tts", 1742403959, sys_, "tts", 2_000, supports_audio=True, encoding=O200K,
                 pricing_input_per_million=0.60, pricing_output_per_million=12.00),
        _service("whisper-1", 1677532384, "openai-internal", "transcription", 448, 448, supports_audio=True),
        # Input price is for audio tokens.
        _service("gpt-4o-transcribe", 1742068463, sys_, "transcription", 16_000, 2_000, supports_audio=True,
                 encoding=O200K, pricing_input_per_million=6.00, pricing_output_per_million=10.00,
                 training_cutoff="2024-06"),
        _service("dall-e-2", 1698798177, sys_, "image", 1_000),
        _service("dall-e-3", 1698785189, sys_, "image", 4_000),
        # Output price is for image tokens.
        _service("gpt-image-1", 1745517030, sys_, "image", 32_000, supports_vision=True, encoding=O200K,
                 pricing_input_per_million=5.00, pricing_output_per_million=40.00),

        # --- Open-weight chat ---
        hf("meta-llama/Llama-3.1-8B-Instruct", _d("2024-07-23"), 131_072, 8_192, "2023-12"),
        hf("meta-llama/Llama-3.1-70B-Instruct", _d("2024-07-23"), 131_072, 8_192, "2023-12"),
        hf("meta-llama/Llama-3.3-70B-Instruct", _d("2024-12-06"), 131_072, 8_192, "2023-12"),
        hf("meta-llama/Llama-3.2-11B-Vision-Instruct", _d("2024-09-25"), 131_072, 8_192, "2023-12",
           supports_vision=True),
        hf("mistralai/Mistral-7B-Instruct-v0.3", _d("2024-05-22"), 32_768, 8_192),
        hf("mistralai/Mixtral-8x7B-Instruct-v0.1", _d("2023-12-11"), 32_768, 8_192, supports_tools=False),
        hf("Qwen/Qwen2.5-7B-Instruct", _d("2024-09-19"), 32_768, 8_192),
        hf("Qwen/Qwen2.5-72B-Instruct", _d("2024-09-19"), 32_768, 8_192),
        hf("Qwen/QwQ-32B", _d("2025-03-06"), 131_072, 32_768, supports_reasoning=True),
        # Qwen3 thinks by default (hybrid); config max_position_embeddings is 40960.
        hf("Qwen/Qwen3-8B", _d("2025-04-29"), 40_960, 32_768, supports_reasoning=True),
        hf("google/gemma-2-9b-it", _d("2024-06-27"), 8_192, 4_096, supports_tools=False),
        hf("nvidia/Llama-3.1-Nemotron-70B-Instruct-HF", _d("2024-10-15"), 131_072, 8_192, "2023-12"),
        _service("nvidia/llama-3.2-nv-rerankqa-1b-v2", _d("2024-12-01"), "nvidia", "rerank", 8_192),
    )


BUILTIN_MODELS: tuple[ModelInfo, ...] = _builtins()


# ----------------------------------------------------------- name inference

def _rx(pattern: str) -> re.Pattern:
    return re.compile(pattern)


_SNAPSHOT = _rx(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")  # gpt-4o-2024-08-06, gpt-4-0613, x-20241022
_O_SERIES = _rx(r"^(?:openai/)?o[1-9](?:$|[-_:.])")  # OpenAI's o1, o3-mini, openai/o4-mini
_O_TOKEN = _rx(r"(?:^|[/:_-])o[1-9](?:$|[-_:.])")  # any "-o1"-style name (marco-o1): reasoning only
_R1 = _rx(r"(?:^|[/:_-])r1(?:$|[-_:.])")
_CTX_HINT = _rx(r"(?:^|[-_.:])(\d{1,4})([km])(?=$|[-_.:])")  # -32k, -128k, -1m

_KIND_RULES = (  # first match wins; checked on the lower-cased id
    ("rerank", _rx(r"rerank")),
    ("embedding", _rx(r"embed|(?:^|[/_-])(?:bge|gte|e5)-|minilm|mpnet|sentence-transformers/")),
    ("moderation", _rx(r"moderation")),
    ("tts", _rx(r"(?:^|[/_-])tts(?:$|[-_])|text-to-speech")),
    ("transcription", _rx(r"whisper|transcribe")),
    ("image", _rx(r"dall-e|gpt-image|stable-diffusion|sdxl|flux[.-]")),
    ("completion", _rx(r"gpt-3\.5-turbo-instruct|(?:^|/)(?:davinci|babbage)(?:-|$)")),
)
_REASONING = _rx(r"reasoning|reasoner|thinking|qwq|gpt-5(?!-chat)|magistral")
_QWEN3 = _rx(r"qwen3(?!.*instruct)")  # Qwen3 thinks by default; the -Instruct-2507 line does not
_AUDIO = _rx(r"audio|realtime")
_VISION = _rx(r"vision|(?:^|[/_-])vl(?:$|[-_])|4o|llava|pixtral|gpt-4\.1|gpt-4\.5|gpt-5|gpt-4-turbo"
              r"|llama-?4|gemma-?3|omni|gpt-image")
_NO_VISION_O = _rx(r"o[13]-mini")
_O200K = _rx(r"4o|gpt-4\.[15]|gpt-5|gpt-oss|gpt-image|gpt-realtime|gpt-audio|omni")
_NO_TOOLS = _rx(r"o1-mini|chatgpt-")
_NO_JSON_SCHEMA = _rx(r"o1-mini|chatgpt-|gpt-4(?![o.])|gpt-3\.5")

_LIMITS = (  # (pattern, context_window, max_output_tokens) for generating models; first match wins
    (_rx(r"gpt-5"), 400_000, 128_000),
    (_rx(r"gpt-4\.1"), 1_047_576, 32_768),
    (_rx(r"o1-mini"), 128_000, 65_536),
    (_O_SERIES, 200_000, 100_000),
    (_rx(r"4o|gpt-4\.5"), 128_000, 16_384),
    (_rx(r"gpt-4-turbo|gpt-4-(?:1106|0125)|gpt-4-vision"), 128_000, 4_096),
    (_rx(r"gpt-4"), 8_192, 8_192),
    (_rx(r"gpt-3\.5-turbo-instruct|davinci|babbage"), 4_096, 4_096),
    (_rx(r"gpt-3\.5"), 16_385, 4_096),
    (_rx(r"gpt-oss"), 131_072, 131_072),
    (_rx(r"llama-?2"), 4_096, 2_048),
    (_rx(r"llama-?3(?![.\d])"), 8_192, 4_096),
    (_rx(r"llama|nemotron"), 131_072, 8_192),
    (_rx(r"mistral|mixtral|ministral|codestral"), 32_768, 8_192),
    (_rx(r"gemma"), 8_192, 4_096),
    (_rx(r"qwen3.*2507"), 262_144, 32_768),
    (_rx(r"qwen3"), 40_960, 32_768),
    (_rx(r"qwq"), 131_072, 32_768),
    (_rx(r"qwen"), 32_768, 8_192),
    (_rx(r"deepseek"), 131_072, 8_192),
)
_DEFAULT_LIMITS = (131_072, 16_384)  # generous: unknown models should not trip context errors

_OWNERS = (  # for ids without an org/ prefix
    ("system", _rx(r"^(?:gpt-|chatgpt-|text-embedding|text-moderation|omni-moderation|dall-e|tts-|whisper"
                   r"|davinci|babbage|o[1-9](?:$|-))")),
    ("anthropic", _rx(r"claude")),
    ("google", _rx(r"gemini|gemma")),
    ("meta-llama", _rx(r"llama")),
    ("mistralai", _rx(r"mistral|mixtral|codestral|ministral|magistral|pixtral")),
    ("qwen", _rx(r"qwen|qwq")),
    ("deepseek-ai", _rx(r"deepseek")),
    ("nvidia", _rx(r"nemotron|^nv-")),
    ("microsoft", _rx(r"^phi-")),
)

# OpenAI fine-tuning list prices (USD / 1M tokens, inference), keyed by base model.
_FT_PRICING = {
    "gpt-4o": (3.75, 15.00),
    "gpt-4o-mini": (0.30, 1.20),
    "gpt-4.1": (3.00, 12.00),
    "gpt-4.1-mini": (0.80, 3.20),
    "gpt-4.1-nano": (0.20, 0.80),
    "gpt-3.5-turbo": (3.00, 6.00),
    "o4-mini": (4.00, 16.00),
}


def infer_from_name(model_id: str, created: int | None = None) -> ModelInfo:
    """Metadata for an unknown id from family rules on its name alone."""
    s = model_id.lower()
    created = int(time.time()) if created is None else created
    org, _, _ = model_id.rpartition("/")
    if org:
        owned_by = org.lower()
    else:
        owned_by = next((o for o, rx in _OWNERS if rx.search(s)), "custom")
    kind = next((k for k, rx in _KIND_RULES if rx.search(s)), "chat")
    o_series = bool(_O_SERIES.search(s))
    o200k = o_series or bool(_O200K.search(s))
    audio = bool(_AUDIO.search(s)) or kind in ("tts", "transcription")
    vision = (bool(_VISION.search(s)) or (o_series and not _NO_VISION_O.search(s))) and not _AUDIO.search(s)
    if kind in ("tts", "transcription", "embedding", "rerank"):
        vision = False
    info = ModelInfo(model_id, created, owned_by, 0, 0, supports_vision=vision, supports_audio=audio,
                     encoding=O200K if o200k else CL100K, kind=kind)

    if kind in ("chat", "completion"):
        info.supports_reasoning = (kind == "chat" and "gpt-oss" not in s and bool(
            _O_TOKEN.search(s) or _R1.search(s) or _REASONING.search(s) or _QWEN3.search(s)))
        info.supports_tools = kind == "chat" and not _NO_TOOLS.search(s)
        info.supports_json_schema = kind == "chat" and not audio and not _NO_JSON_SCHEMA.search(s)
        ctx, out = next(((c, o) for rx, c, o in _LIMITS if rx.search(s)), _DEFAULT_LIMITS)
        if info.supports_reasoning:
            out = max(out, 32_768)
    else:
        info.supports_tools = info.supports_json_schema = False
        if kind == "embedding":
            info.is_embedding = True
            info.embedding_dimensions = _embedding_dims(s)
            ctx, out = (8_191 if s.startswith("text-embedding") else 8_192), 0
        elif kind == "transcription":
            ctx, out = (448, 448) if "whisper" in s else (16_000, 2_000)
        else:
            ctx, out = {"rerank": 8_192, "moderation": 32_768, "tts": 4_096, "image": 4_000}[kind], 0

    hint = _CTX_HINT.search(s)
    if hint:
        ctx = int(hint.group(1)) * (1024 if hint.group(2) == "k" else 1024 * 1024)
    info.context_window = ctx
    info.max_output_tokens = min(out, ctx)
    return info


def _embedding_dims(s: str) -> int:
    openai = s.startswith("text-embedding")
    if "large" in s:
        return 3072 if openai else 1024
    if "small" in s or "minilm" in s:
        return 1536 if openai else 384
    if "base" in s or "mpnet" in s:
        return 768
    return 1536


# ----------------------------------------------------------------- catalogue

class Catalog:
    """Insertion-ordered model table: built-ins, then `extra`, then ids created on first use."""

    def __init__(self, extra: Iterable[ModelInfo] = ()):
        self._models: dict[str, ModelInfo] = {}
        self._known_lower: dict[str, ModelInfo] = {}  # templates for variants: lower-cased id
        self._known_bare: dict[str, ModelInfo] = {}  # and lower-cased name after "org/"
        self._lock = threading.Lock()
        self._version = 0
        self._payload: tuple[int, dict] | None = None
        for m in BUILTIN_MODELS:
            self.add(replace(m))  # each Catalog owns its objects
        for m in extra:
            self.add(m)

    # ---- reads (lock-free)

    def get(self, model_id: str) -> ModelInfo | None:
        return self._models.get(model_id)

    def get_or_create(self, model_id: str) -> ModelInfo:
        info = self._models.get(model_id)
        if info is not None:
            return info
        return self._create(model_id)

    def list(self) -> list[ModelInfo]:
        return list(self._models.values())

    def list_payload(self) -> dict:
        """{"object": "list", "data": [...]}, cached until a model is added. Treat as read-only."""
        cached = self._payload
        version = self._version
        if cached is not None and cached[0] == version:
            return cached[1]
        # Version is read before the snapshot: a concurrent add makes this entry stale, never wrong.
        payload = {"object": "list", "data": [m.to_openai() for m in list(self._models.values())]}
        self._payload = (version, payload)
        return payload

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self.list())

    # ---- writes

    def add(self, info: ModelInfo) -> None:
        """Register (or replace, keeping its position) a model and make it a template for variants."""
        with self._lock:
            self._models[info.id] = info
            low = info.id.lower()
            self._known_lower[low] = info
            if "/" in low:
                bare = low.rpartition("/")[2]
                current = self._known_bare.get(bare)
                if current is None or current.id == info.id:
                    self._known_bare[bare] = info
            self._version += 1

    def _create(self, model_id: str) -> ModelInfo:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError("model id must be a non-empty string")
        info = self._infer(model_id)
        with self._lock:
            existing = self._models.get(model_id)
            if existing is not None:  # lost a race: everyone gets the same object
                return existing
            self._models[model_id] = info
            self._version += 1
        return info

    # ---- inference

    def _template(self, model_id: str) -> ModelInfo | None:
        """The known model this id is a variant of: other casing, dated snapshot, org/ prefix added or dropped."""
        low = model_id.lower()
        org, _, bare = low.rpartition("/")
        candidates = [low, _SNAPSHOT.sub("", low)]
        if org:
            candidates += [bare, _SNAPSHOT.sub("", bare)]
        for c in candidates:
            t = self._known_lower.get(c) or self._known_bare.get(c)
            if t is not None:
                return t
        return None

    def _infer(self, model_id: str) -> ModelInfo:
        now = int(time.time())
        if model_id.startswith("ft:"):
            # ft:<base>:<org>:<suffix>:<job id>
            parts = model_id.split(":")
            base = parts[1] if len(parts) > 1 and parts[1] else None
            owner = parts[2] if len(parts) > 2 and parts[2] else "user"
            template = self._template(base) if base else None
            if template is not None:
                price = _FT_PRICING.get(template.id, (None, None))
                return replace(template, id=model_id, created=now, owned_by=owner, parent=base,
                               pricing_input_per_million=price[0], pricing_output_per_million=price[1])
            src = infer_from_name(base, now) if base else infer_from_name(model_id, now)
            return replace(src, id=model_id, owned_by=owner, parent=base)
        template = self._template(model_id)
        if template is not None:
            org = model_id.rpartition("/")[0]
            return replace(template, id=model_id, owned_by=org.lower() if org else template.owned_by, parent=None)
        return infer_from_name(model_id, now)
