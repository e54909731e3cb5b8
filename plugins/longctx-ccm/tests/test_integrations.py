"""The LangChain and LlamaIndex faces use the ccm memory unchanged: one compressed memory per thread / session."""

import pytest

from longctx_llm import Engine, ModelHandle, load_pipeline

from ccm_helpers import save_random_adapter


@pytest.fixture
def tiny_ccm(tiny_model_dir, tmp_path):
    loaded = ModelHandle(str(tiny_model_dir), device="cpu", dtype="float32").get()
    return loaded, save_random_adapter(loaded, tmp_path / "ccm")


def test_langchain_chat_model_keeps_one_memory_per_thread(tiny_ccm, tiny_model_dir):
    pytest.importorskip("langchain_longctx")
    _, adapter = tiny_ccm
    chat = load_pipeline({
        "model": {"source": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
        "memory": {"name": "ccm", "adapter": str(adapter), "comp_tokens": 2},
        "generation": {"max_new_tokens": 5},
        "component": "langchain.chat_model",
    })
    history = []
    for text in ("My name is Ada.", "I live in Paris."):
        history.append(("human", text))
        reply = chat.invoke(history, config={"configurable": {"thread_id": "t1"}})
        history.append(("ai", reply.content))
    chat.invoke("Hello.", config={"configurable": {"thread_id": "t2"}})
    engine = chat.engine
    assert engine.session("t1").memory.slots == 4 and engine.session("t2").memory.slots == 2
    s = engine.session("t1")
    # between turns the cache holds the slots and the last raw_tail (32) tokens of the compressed text, nothing else
    assert s.state.seen == 4 + 32 and s.cached_ids[4:] == s.memory.covered[-32:]


def test_llama_index_memory_and_chat_engine(tiny_ccm):
    pytest.importorskip("llama_index.memory.longctx")
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.llms.longctx import LongctxLLM
    from llama_index.memory.longctx import LongctxMemory

    loaded, adapter = tiny_ccm
    engine = Engine(loaded, memory={"name": "ccm", "adapter": str(adapter)}, generation={"max_new_tokens": 5})
    llm = LongctxLLM(engine=engine)
    memory = LongctxMemory.from_defaults(llm=llm, session_id="li")
    chat = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    for text in ("Tell me about rivers.", "And lakes?", "And seas?"):
        chat.chat(text)
    session = engine.session("li")
    assert session.turns == 3 and session.memory.slots == 6 and session.state.seen == 6 + 32  # + the raw tail


@pytest.mark.integration
def test_shipped_adapter_serves_the_embedded_model(smollm):
    engine = Engine(smollm, memory={"name": "ccm"}, generation={"max_new_tokens": 12})
    engine.chat("My favourite colour is green.", session_id="s")
    engine.chat("What is the capital of France?", session_id="s")
    s = engine.session("s")
    assert s.memory.slots == 4 and s.state.seen == 4 + 32  # the slots and the raw tail (32 tokens)
    card = s.memory.adapter.card
    assert card["base_model"]["sha256"] == smollm.fingerprint
    # a trained adapter, measured where it was trained: held-out Python docs (per source when trained on a mix)
    pydocs = (card.get("heldout_by_source") or {}).get("pydocs-3.11", card["heldout"])
    assert pydocs["concat_k2"]["gap_closed"] >= 0.8
