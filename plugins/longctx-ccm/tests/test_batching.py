"""CCM under continuous batching: concurrent sessions (turns compressed into slots between replies) give the same
greedy replies as their serial runs; their slots decode as rows of one forward."""


from ccm_helpers import save_random_adapter
from longctx_llm import Engine

PROMPTS = ["My name is Ada.", "I live in Paris and I like the river.", "Count to three.", "Hello there!"]


def test_ccm_sessions_batched_equal_serial(peaked_model, chat_runs, tmp_path):
    tiny = peaked_model()
    adapter = save_random_adapter(tiny, tmp_path / "ccm")
    memory = {"name": "ccm", "adapter": str(adapter)}
    serial = chat_runs.serial(Engine(tiny, memory=memory, batching={"max_batch": 1}), PROMPTS, turns=3, tokens=8)
    engine = Engine(tiny, memory=memory, batching={"max_batch": 4})
    assert chat_runs.concurrent(engine, PROMPTS, turns=3, tokens=8) == serial
    # rows shared forwards (less evenly than plain chats: each turn ends with a compression in its own thread)
    assert engine.scheduler.steps <= 0.7 * sum(len(v) - 1 for v in serial.values())
    assert engine.session("s0").memory.slots > 0  # the earlier turns live as slots
