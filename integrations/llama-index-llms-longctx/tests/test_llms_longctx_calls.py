"""LongctxLLM calls on a tiny random model: sync, streaming and async faces agree; sessions; bad input."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock

from longctx_llm import Engine, KVCacheState, registry
from longctx_llm.builtins.full import FullStrategy
from longctx_llm.errors import InputError
from llama_index.llms.longctx import SESSION_KEY, LongctxLLM

USER = [ChatMessage(role=MessageRole.USER, content="Tell me about rivers.")]


@pytest.fixture
def llm(tiny_model):
    # greedy and long enough that generation takes many decode steps
    return LongctxLLM(engine=Engine(tiny_model("llama", max_positions=512)), max_new_tokens=24, temperature=0.0)


def test_chat_and_stream_chat_agree(llm):
    reply = llm.chat(USER)
    chunks = list(llm.stream_chat(USER))
    assert reply.message.role == MessageRole.ASSISTANT
    assert "".join(c.delta for c in chunks) == reply.message.content == chunks[-1].message.content
    usage = chunks[-1].raw["usage"]
    assert usage == reply.raw["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_complete_is_one_user_turn_unless_formatted(llm):
    assert llm.complete("Tell me about rivers.").text == llm.chat(USER).message.content
    raw = llm.complete("Rivers are", formatted=True)
    assert raw.text == llm.engine.complete("Rivers are", max_new_tokens=24).text
    streamed = list(llm.stream_complete("Rivers are", formatted=True))
    assert "".join(c.delta for c in streamed) == raw.text == streamed[-1].text


def test_generation_overrides_per_call(llm):
    short = llm.chat(USER, max_new_tokens=3)
    assert short.raw["usage"]["completion_tokens"] <= 3
    assert short.raw["finish_reason"] in ("length", "stop")


def test_async_faces_match_sync(llm):
    async def run():
        a = await llm.achat(USER)
        chunks = [c async for c in await llm.astream_chat(USER)]
        c = await llm.acomplete("Rivers are", formatted=True)
        cs = [x async for x in await llm.astream_complete("Rivers are", formatted=True)]
        return a, chunks, c, cs

    a, chunks, c, cs = asyncio.run(run())
    assert a.message.content == llm.chat(USER).message.content == "".join(x.delta for x in chunks)
    assert c.text == "".join(x.delta for x in cs) == llm.complete("Rivers are", formatted=True).text


def test_async_generation_leaves_the_event_loop_free(llm):
    """Another coroutine runs while the model generates (a blocking call would starve it until the end)."""

    async def run():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        task = asyncio.create_task(llm.achat(USER, max_new_tokens=24))
        await asyncio.sleep(0)
        running_while_generating = not task.done()
        await task
        seen = []
        async for _ in await llm.astream_chat(USER):
            seen.append(ticks)
        done = True
        await ticking
        return running_while_generating, seen

    running, seen = asyncio.run(run())
    assert running
    assert seen[-1] > seen[0]  # the ticker ran between streamed chunks


def test_concurrent_async_sessions_match_sequential(llm):
    questions = ["Tell me about rivers.", "Name a mountain.", "What is rain?", "Describe a lake."]

    def msgs(q):
        return [ChatMessage(role=MessageRole.USER, content=q)]

    sequential = [llm.chat(msgs(q), session_id=f"s{i}").message.content for i, q in enumerate(questions)]
    for i in range(len(questions)):
        llm.engine.reset_session(f"s{i}")

    async def run():
        return await asyncio.gather(*(llm.achat(msgs(q), session_id=f"s{i}") for i, q in enumerate(questions)))

    assert [r.message.content for r in asyncio.run(run())] == sequential


class CountingState(KVCacheState):
    """A plain KV cache that counts the tokens it is fed (to see what a session re-reads)."""

    fed = 0

    def forward(self, input_ids, attention_mask=None, *, all_logits=False):
        self.fed += input_ids.shape[1]
        return super().forward(input_ids, attention_mask, all_logits=all_logits)


class CountingStrategy(FullStrategy):
    name = "test-counting"

    def new_state(self, model, batch_size=1):
        return CountingState(model, batch_size)


@pytest.fixture
def counting_llm(tiny_model):
    registry.register("strategy", "test-counting", CountingStrategy)
    yield LongctxLLM(engine=Engine(tiny_model("llama", max_positions=512), strategy="test-counting"), max_new_tokens=8)
    registry.unregister("strategy", "test-counting")


def test_session_reuses_the_cache_across_turns(counting_llm):
    llm = counting_llm
    first = llm.chat(USER, session_id="t")
    session = llm.engine.session("t")
    fed_first = session.state.fed
    history = [*USER, first.message, ChatMessage(role=MessageRole.USER, content="And lakes?")]
    second = llm.chat(history, session_id="t")
    assert session.turns == 2
    fed_second = session.state.fed - fed_first
    # the first turn's prompt is not read again: only the reply and the new user turn are fed
    assert fed_second <= second.raw["usage"]["prompt_tokens"] - first.raw["usage"]["prompt_tokens"] + 1
    assert second.message.content == llm.chat(history).message.content  # same answer as a stateless call


def test_memory_tagged_messages_run_in_their_session(llm):
    tagged = [ChatMessage(role=MessageRole.USER, content="Hello", additional_kwargs={SESSION_KEY: "tagged"})]
    llm.chat(tagged)
    assert "tagged" in llm.engine.sessions() and llm.engine.session("tagged").turns == 1
    mixed = [*tagged, ChatMessage(role=MessageRole.USER, content="x", additional_kwargs={SESSION_KEY: "other"})]
    with pytest.raises(InputError, match="several sessions"):
        llm.chat(mixed)


def test_stopping_a_stream_early_releases_the_session(llm):
    stream = llm.stream_chat(USER, session_id="early")
    next(stream)
    stream.close()
    assert llm.chat(USER, session_id="early").message.content  # the session is usable again


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda llm: llm.chat(USER, max_tokens=5), "max_tokens"),
        (lambda llm: llm.chat([]), "at least one message"),
        (lambda llm: llm.chat([ChatMessage(role=MessageRole.USER, content="")]), "empty"),
        (lambda llm: llm.chat(USER, temperature=-1), "temperature"),
        (lambda llm: llm.chat(USER, stop=[""]), "stop"),
        (lambda llm: llm.chat(USER, tool_choice="lookup"), "tool_choice"),
        (lambda llm: llm.complete(""), "prompt"),
        (lambda llm: llm.complete("hi", session_id="x"), "session_id"),
        (
            lambda llm: llm.chat(
                [ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="see"), ImageBlock(url="http://x/a.png")])]
            ),
            "image",
        ),
    ],
)
def test_bad_input_raises_input_errors(llm, call, fragment):
    with pytest.raises(InputError, match=fragment):
        call(llm)


def test_bad_input_in_a_stream_fails_at_the_call(llm):
    with pytest.raises(InputError, match="max_tokens"):
        llm.stream_chat(USER, max_tokens=3)

    async def run():
        await llm.astream_chat(USER, max_tokens=3)

    with pytest.raises(InputError, match="max_tokens"):
        asyncio.run(run())


def test_instrumentation_payload_does_not_load_the_model():
    """LlamaIndex sends call events from the event loop before an async call starts: loading there would block it."""
    llm = LongctxLLM(model_name="smollm2-135m-instruct", device="cpu", dtype="float32", max_new_tokens=2)
    payload = llm.to_payload()
    assert not llm.engine.model_handle.is_loaded
    assert payload["model_name"] == "smollm2-135m-instruct" and payload["class_name"] == "LongctxLLM"
