import threading
import time

import pytest

from fakeai.engine.catalog import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    KINDS,
    Catalog,
    ModelInfo,
    infer_from_name,
)

REQUIRED = [
    "openai/gpt-oss-120b", "openai/gpt-oss-20b",
    "deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai/DeepSeek-V3",
    "o1", "o1-mini", "o3", "o3-mini", "o4-mini",
    "gpt-4o", "gpt-4o-mini", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview",
    "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
    "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "gpt-5", "gpt-5-mini", "gpt-5-nano",
    "chatgpt-4o-latest",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "sentence-transformers/all-mpnet-base-v2", "nvidia/nv-embedqa-e5-v5", "BAAI/bge-m3",
    "omni-moderation-latest", "text-moderation-latest", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "whisper-1",
    "gpt-4o-transcribe", "dall-e-2", "dall-e-3", "gpt-image-1",
    "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
    "meta-llama/Llama-3.2-11B-Vision-Instruct", "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-72B-Instruct",
    "Qwen/QwQ-32B", "Qwen/Qwen3-8B", "google/gemma-2-9b-it", "nvidia/Llama-3.1-Nemotron-70B-Instruct-HF",
    "nvidia/llama-3.2-nv-rerankqa-1b-v2",
]

EPOCH_2015 = 1420070400
NON_GENERATING = {"embedding", "rerank", "moderation", "tts", "image"}


@pytest.fixture
def cat():
    return Catalog()


def test_required_models_present(cat):
    missing = [m for m in REQUIRED if m not in cat]
    assert not missing
    assert DEFAULT_MODEL == "openai/gpt-oss-120b" and DEFAULT_MODEL in cat


def test_builtin_ids_unique():
    ids = [m.id for m in BUILTIN_MODELS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("m", BUILTIN_MODELS, ids=lambda m: m.id)
def test_builtin_sane(m):
    assert EPOCH_2015 < m.created <= time.time() + 86400
    assert isinstance(m.created, int)
    assert m.owned_by and m.owned_by == m.owned_by.strip()
    assert m.kind in KINDS
    assert m.encoding in ("o200k_base", "cl100k_base")
    assert m.context_window > 0
    if m.kind in NON_GENERATING:
        assert m.max_output_tokens == 0
        assert not m.supports_tools and not m.supports_reasoning and not m.supports_json_schema
    else:
        # Strict for almost all; gpt-oss, gpt-4 and 3.5-instruct officially allow output == context.
        assert 0 < m.max_output_tokens <= m.context_window
    assert m.is_embedding == (m.kind == "embedding")
    assert (m.embedding_dimensions > 0) == m.is_embedding
    if m.kind == "completion":
        assert not m.supports_tools
    for p in (m.pricing_input_per_million, m.pricing_output_per_million):
        assert p is None or p >= 0
    if m.training_cutoff is not None:
        time.strptime(m.training_cutoff, "%Y-%m")
    if "/" in m.id:
        assert m.owned_by == m.id.split("/")[0].lower()


def test_strictly_more_context_than_output_for_most_chat_models():
    equal = {m.id for m in BUILTIN_MODELS if m.kind in ("chat", "completion")
             and m.max_output_tokens == m.context_window}
    assert equal == {"openai/gpt-oss-120b", "openai/gpt-oss-20b", "gpt-4", "gpt-3.5-turbo-instruct"}


@pytest.mark.parametrize("m", BUILTIN_MODELS, ids=lambda m: m.id)
def test_to_openai_shape(m):
    d = m.to_openai()
    assert d["id"] == m.id and d["object"] == "model" and d["root"] == m.id
    assert d["created"] == m.created and d["owned_by"] == m.owned_by
    assert d["parent"] is None and d["permission"] == [] and d["max_model_len"] == m.context_window
    md = d["metadata"]
    assert md["context_window"] == m.context_window and md["max_output_tokens"] == m.max_output_tokens
    assert set(md["capabilities"]) == {"vision", "audio", "tools", "reasoning", "json_schema", "embeddings"}
    assert md["capabilities"]["embeddings"] == m.is_embedding
    assert md["pricing"] is None or set(md["pricing"]) == {"input_per_million", "output_per_million"}
    assert md["training_cutoff"] == m.training_cutoff


def test_pricing_null_when_unknown(cat):
    assert cat.get("meta-llama/Llama-3.1-8B-Instruct").to_openai()["metadata"]["pricing"] is None
    assert cat.get("gpt-4o").to_openai()["metadata"]["pricing"] == {"input_per_million": 2.5,
                                                                     "output_per_million": 10.0}


@pytest.mark.parametrize("mid,reasoning", [
    ("openai/gpt-oss-120b", False), ("openai/gpt-oss-20b", False),
    ("deepseek-ai/DeepSeek-R1", True), ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", True),
    ("deepseek-ai/DeepSeek-V3", False), ("Qwen/QwQ-32B", True),
    ("o1", True), ("o1-mini", True), ("o3", True), ("o3-mini", True), ("o4-mini", True),
    ("gpt-5", True), ("gpt-4o", False), ("gpt-4.1", False), ("meta-llama/Llama-3.3-70B-Instruct", False),
])
def test_reasoning_flags(cat, mid, reasoning):
    assert cat.get(mid).supports_reasoning is reasoning


@pytest.mark.parametrize("mid", ["gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview",
                                 "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview",
                                 "tts-1", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-tts"])
def test_audio_flags(cat, mid):
    assert cat.get(mid).supports_audio


def test_non_audio_chat(cat):
    assert not cat.get("gpt-4o").supports_audio
    assert not cat.get("openai/gpt-oss-120b").supports_audio


@pytest.mark.parametrize("mid,dims", [
    ("text-embedding-3-small", 1536), ("text-embedding-3-large", 3072), ("text-embedding-ada-002", 1536),
    ("sentence-transformers/all-mpnet-base-v2", 768), ("nvidia/nv-embedqa-e5-v5", 1024), ("BAAI/bge-m3", 1024),
])
def test_embedding_dims(cat, mid, dims):
    m = cat.get(mid)
    assert m.is_embedding and m.embedding_dimensions == dims and m.kind == "embedding"


def test_misc_flags(cat):
    assert cat.get("gpt-4o").supports_vision and cat.get("gpt-4o").encoding == "o200k_base"
    assert cat.get("meta-llama/Llama-3.2-11B-Vision-Instruct").supports_vision
    assert not cat.get("o3-mini").supports_vision
    assert cat.get("openai/gpt-oss-120b").encoding == "o200k_base"
    for mid in ("o1", "o3-mini", "gpt-4.1-nano", "gpt-5-nano", "gpt-4o-mini-realtime-preview"):
        assert cat.get(mid).encoding == "o200k_base", mid
    for mid in ("gpt-4", "gpt-3.5-turbo", "text-embedding-3-small", "meta-llama/Llama-3.1-8B-Instruct"):
        assert cat.get(mid).encoding == "cl100k_base", mid
    assert cat.get("gpt-3.5-turbo-instruct").kind == "completion"
    assert cat.get("nvidia/llama-3.2-nv-rerankqa-1b-v2").kind == "rerank"
    assert not cat.get("nvidia/llama-3.2-nv-rerankqa-1b-v2").is_embedding
    assert cat.get("dall-e-3").kind == "image" and not cat.get("dall-e-3").supports_tools
    assert cat.get("omni-moderation-latest").kind == "moderation"
    assert cat.get("gpt-4.1").context_window == 1_047_576


def test_builtin_lookup_returns_same_object(cat):
    a = cat.get("gpt-4o")
    assert a is cat.get("gpt-4o") is cat.get_or_create("gpt-4o")
    assert cat.get("no-such-model") is None


def test_catalogs_do_not_share_objects():
    a, b = Catalog(), Catalog()
    assert a.get("gpt-4o") is not b.get("gpt-4o")
    a.get("gpt-4o").context_window = 1
    assert b.get("gpt-4o").context_window == 128_000


# (id, expected attribute subset) for names the catalogue has never seen.
INFER_TABLE = [
    ("my-custom-model", dict(kind="chat", owned_by="custom", supports_reasoning=False, supports_tools=True,
                             is_embedding=False, supports_vision=False, supports_audio=False)),
    ("acme/super-embed-v1", dict(kind="embedding", is_embedding=True, owned_by="acme", max_output_tokens=0,
                                 supports_tools=False)),
    ("BAAI/bge-small-en-v1.5", dict(kind="embedding", embedding_dimensions=384, owned_by="baai")),
    ("intfloat/e5-large-v2", dict(kind="embedding", embedding_dimensions=1024)),
    ("text-embedding-4-large", dict(kind="embedding", embedding_dimensions=3072, context_window=8191)),
    ("Qwen/Qwen3-Embedding-8B", dict(kind="embedding", supports_reasoning=False)),
    ("BAAI/bge-reranker-v2-m3", dict(kind="rerank", is_embedding=False, max_output_tokens=0)),
    ("o1-preview", dict(supports_reasoning=True, encoding="o200k_base", owned_by="system")),
    ("o3-pro", dict(supports_reasoning=True, supports_vision=True, context_window=200_000)),
    ("o4-mini-high", dict(supports_reasoning=True)),
    ("openai/o5", dict(supports_reasoning=True, owned_by="openai")),
    ("someorg/DeepSeek-R1-Distill-Llama-8B", dict(supports_reasoning=True, owned_by="someorg")),
    ("deepseek-r1:7b", dict(supports_reasoning=True, owned_by="deepseek-ai")),
    ("acme/reasoning-large", dict(supports_reasoning=True)),
    ("claude-3-7-sonnet-thinking", dict(supports_reasoning=True, owned_by="anthropic")),
    ("Qwen/QwQ-32B-Preview", dict(supports_reasoning=True, owned_by="qwen")),
    ("Qwen/Qwen3-30B-A3B", dict(supports_reasoning=True)),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", dict(supports_reasoning=False, context_window=262_144)),
    ("marco-o1", dict(supports_reasoning=True, encoding="cl100k_base")),
    ("openai/gpt-oss-safeguard-20b", dict(supports_reasoning=False, encoding="o200k_base")),
    ("gpt-4o-audio-preview-foo", dict(supports_audio=True, supports_vision=False, supports_json_schema=False)),
    ("gpt-realtime", dict(supports_audio=True, encoding="o200k_base")),
    ("acme/voice-realtime-1", dict(supports_audio=True)),
    ("gpt-4o-search-preview", dict(supports_vision=True, encoding="o200k_base", context_window=128_000)),
    ("llava-hf/llava-1.5-7b-hf", dict(supports_vision=True, owned_by="llava-hf")),
    ("Qwen/Qwen2.5-VL-7B-Instruct", dict(supports_vision=True)),
    ("acme/vision-pro", dict(supports_vision=True)),
    ("meta-llama/Llama-2-7b-chat-hf", dict(context_window=4096, owned_by="meta-llama")),
    ("microsoft/Phi-3-mini-128k-instruct", dict(context_window=131_072)),
    ("gpt-4-32k", dict(context_window=32_768, supports_json_schema=False, encoding="cl100k_base")),
    ("gpt-4-1106-preview", dict(context_window=128_000, max_output_tokens=4096)),
    ("davinci-002", dict(kind="completion", supports_tools=False)),
    ("text-moderation-stable", dict(kind="moderation", max_output_tokens=0)),
    ("acme/tts-2", dict(kind="tts", supports_audio=True, max_output_tokens=0)),
    ("openai/whisper-large-v3", dict(kind="transcription", supports_audio=True, owned_by="openai")),
    ("stabilityai/stable-diffusion-xl-base-1.0", dict(kind="image", supports_tools=False)),
    ("mistralai/Mistral-Small-24B-Instruct-2501", dict(context_window=32_768, owned_by="mistralai")),
]


@pytest.mark.parametrize("mid,expected", INFER_TABLE, ids=[t[0] for t in INFER_TABLE])
def test_inference_rules(cat, mid, expected):
    assert mid not in cat
    m = cat.get_or_create(mid)
    assert m.id == mid
    for attr, value in expected.items():
        assert getattr(m, attr) == value, (attr, getattr(m, attr), value)
    assert m.parent is None
    assert m.max_output_tokens <= m.context_window
    assert EPOCH_2015 < m.created <= time.time() + 1


@pytest.mark.parametrize("mid,expected", INFER_TABLE, ids=[t[0] for t in INFER_TABLE])
def test_infer_from_name_is_pure(mid, expected):
    m = infer_from_name(mid, created=1700000000)
    assert m.created == 1700000000
    for attr, value in expected.items():
        assert getattr(m, attr) == value, (attr, getattr(m, attr), value)


def test_variants_copy_known_metadata(cat):
    snap = cat.get_or_create("gpt-4o-2024-08-06")
    assert (snap.context_window, snap.pricing_input_per_million, snap.supports_vision) == (128_000, 2.5, True)
    assert cat.get_or_create("o3-mini-2025-01-31").supports_reasoning
    assert cat.get_or_create("gpt-4o-realtime-preview-2024-12-17").supports_audio
    bare = cat.get_or_create("gpt-oss-120b")  # no org prefix
    assert bare.owned_by == "openai" and not bare.supports_reasoning and bare.encoding == "o200k_base"
    rehost = cat.get_or_create("RedHatAI/Llama-3.1-8B-Instruct")
    assert rehost.owned_by == "redhatai" and rehost.training_cutoff == "2023-12"
    assert cat.get_or_create("deepseek-r1").supports_reasoning
    upper = cat.get_or_create("GPT-4o-MINI")
    assert upper.pricing_input_per_million == 0.15 and upper is not cat.get("gpt-4o-mini")


def test_fine_tune_parent(cat):
    m = cat.get_or_create("ft:gpt-4o-mini-2024-07-18:acme:my-suffix:abc123")
    assert m.parent == "gpt-4o-mini-2024-07-18"
    assert m.owned_by == "acme"
    assert m.context_window == 128_000 and m.supports_vision
    assert (m.pricing_input_per_million, m.pricing_output_per_million) == (0.30, 1.20)  # fine-tune prices
    assert m.to_openai()["parent"] == "gpt-4o-mini-2024-07-18"
    m2 = cat.get_or_create("ft:gpt-3.5-turbo-0125::xyz")
    assert m2.parent == "gpt-3.5-turbo-0125" and m2.owned_by == "user" and m2.encoding == "cl100k_base"
    m3 = cat.get_or_create("ft:some-open-embed-model:acme::1")
    assert m3.parent == "some-open-embed-model" and m3.is_embedding


def test_created_models_listed_and_payload_invalidated(cat):
    n = len(cat)
    first = cat.list_payload()
    assert first["object"] == "list" and len(first["data"]) == n
    assert cat.list_payload() is first  # cached
    assert [d["id"] for d in first["data"]] == [m.id for m in cat.list()]

    cat.get("gpt-4o")
    cat.get_or_create("gpt-4o")  # hits do not invalidate
    assert cat.list_payload() is first

    m = cat.get_or_create("brand-new-model")
    assert len(cat) == n + 1 and "brand-new-model" in cat
    assert cat.list()[-1] is m
    second = cat.list_payload()
    assert second is not first and second["data"][-1]["id"] == "brand-new-model"
    assert len(second["data"]) == n + 1
    assert cat.get_or_create("brand-new-model") is m
    assert cat.list_payload() is second


def test_list_order_builtins_first(cat):
    ids = [m.id for m in cat.list()]
    assert ids[:len(BUILTIN_MODELS)] == [m.id for m in BUILTIN_MODELS]
    assert [m.id for m in cat] == ids


def test_extra_models():
    custom = ModelInfo("acme/special", 1700000000, "acme", 4096, 1024)
    override = ModelInfo("gpt-4o", 1700000000, "me", 1000, 100)
    cat = Catalog(extra=[custom, override])
    assert cat.get("acme/special") is custom
    assert cat.list()[-1] is custom
    assert cat.get("gpt-4o") is override
    ids = [m.id for m in cat.list()]
    assert ids.index("gpt-4o") < len(BUILTIN_MODELS)  # replaced in place
    assert len(cat) == len(BUILTIN_MODELS) + 1
    assert cat.get_or_create("gpt-4o-2024-11-20").context_window == 1000  # variants follow the override
    assert cat.get_or_create("special").owned_by == "acme"  # bare name resolves to the extra


def test_add_invalidates_payload(cat):
    first = cat.list_payload()
    cat.add(ModelInfo("gpt-4o", 1700000000, "me", 1000, 100))  # same length, new content
    assert cat.list_payload() is not first
    assert next(d for d in cat.list_payload()["data"] if d["id"] == "gpt-4o")["owned_by"] == "me"


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_bad_ids_rejected(cat, bad):
    with pytest.raises(ValueError):
        cat.get_or_create(bad)


def test_concurrent_create_same_object(cat):
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(cat.get_or_create("racy-model"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is results[0] for r in results)
    assert sum(1 for m in cat.list() if m.id == "racy-model") == 1
