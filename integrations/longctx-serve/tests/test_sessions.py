"""Sessions: a resent history feeds only the new turn; concurrent clients stay apart and match a serial run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

API_KEY, MODEL = "test-key", "tiny-llama"  # as in conftest.py
LONG = "Here is some context about the history of the city and its many old bridges. " * 6


def _spy_feeds(engine, monkeypatch) -> list[int]:
    """Record how many tokens each session request feeds the model."""
    fed: list[int] = []
    real = engine._sync

    def spy(session, ids, min_feed=1):
        feed = real(session, ids, min_feed)
        fed.append(len(feed))
        return feed

    monkeypatch.setattr(engine, "_sync", spy)
    return fed


def test_a_session_resending_its_history_feeds_only_the_new_turn(client, engine, monkeypatch):
    fed = _spy_feeds(engine, monkeypatch)
    first = [{"role": "user", "content": LONG + "Which bridge is oldest?"}]
    r1 = client.chat.completions.create(model=MODEL, messages=first, max_tokens=4,
                                        extra_headers={"X-Session-Id": "resend"})
    second = [*first, {"role": "assistant", "content": r1.choices[0].message.content},
              {"role": "user", "content": "And the newest?"}]
    r2 = client.chat.completions.create(model=MODEL, messages=second, max_tokens=4,
                                        extra_headers={"X-Session-Id": "resend"})
    assert fed[0] == r1.usage.prompt_tokens  # the first turn feeds its whole prompt
    assert fed[1] < r2.usage.prompt_tokens - r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert fed[1] < r2.usage.prompt_tokens / 4
    assert engine.get_session("resend").turns == 2
    # the same reply as a stateless request (the cache reuse changes the cost, not the answer)
    stateless = client.chat.completions.create(model=MODEL, messages=second, max_tokens=4)
    assert stateless.choices[0].message.content == r2.choices[0].message.content
    # `user` names the session when there is no header
    client.chat.completions.create(model=MODEL, messages=first, max_tokens=2, user="by-user-field")
    assert engine.get_session("by-user-field") is not None


def test_sixteen_concurrent_clients_match_a_serial_run(client, engine):
    def conversation(i: int, chat) -> list[str]:
        msgs = [{"role": "user", "content": f"Client {i}: tell me about the number {i * 7}."}]
        replies = []
        for follow_up in (f"And number {i + 100}?", None):
            text = chat(msgs)
            replies.append(text)
            if follow_up:
                msgs = [*msgs, {"role": "assistant", "content": text}, {"role": "user", "content": follow_up}]
        return replies

    def over_http(i: int) -> list[str]:
        return conversation(i, lambda m: client.chat.completions.create(
            model=MODEL, messages=m, max_tokens=5, temperature=0, extra_headers={"X-Session-Id": f"c{i}"}
        ).choices[0].message.content)

    def in_process(i: int) -> list[str]:
        return conversation(i, lambda m: engine.chat(m, session_id=f"ref{i}", max_new_tokens=5, temperature=0).text)

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(over_http, range(16)))
    assert served == [in_process(i) for i in range(16)]
    for i in range(16):
        s = engine.get_session(f"c{i}")
        assert s.turns == 2 and f"Client {i}:" in s.history[0]["content"]
        assert s.history[-1]["content"] == served[i][1]
