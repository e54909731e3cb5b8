"""`longctx eval`: every command's JSON, the gap/recall definitions, compare's files, and bad arguments."""

import json

import pytest

from longctx_llm import cli
from longctx_llm.eval.evaluate import spans

TEXT = "tests/data/pydocs_tutorial.txt"


@pytest.fixture
def pipeline(tmp_path, tiny_model_dir):
    def make(name="p", strategy="{name: full}", memory="{name: buffer}"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"model: {{source: {tiny_model_dir}, device: cpu}}\nstrategy: {strategy}\nmemory: {memory}\n")
        return str(path)

    return make


def run_json(capsys, *args):
    assert cli.main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["results"]


def test_ppl_and_stream_report_speed_and_memory(pipeline, capsys):
    rows = run_json(capsys, "ppl", pipeline(), "--text", TEXT, "--lengths", "64,128")
    assert [r["length"] for r in rows] == [64, 128]
    assert all(set(r) >= {"strategy", "ppl", "tokens_per_s", "peak_memory_mib"} for r in rows)
    rows = run_json(capsys, "stream", pipeline(), "--text", TEXT, "--tokens", "100", "--every", "50")
    assert [r["tokens_seen"] for r in rows] == [51, 100]
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_ppl_same_tokens_scores_one_token_set_at_every_length(pipeline, capsys):
    """--same-tokens: the first max(lengths) tokens in windows of each length; the tokens that start no window."""
    import math

    import torch

    from longctx_llm import Engine
    from longctx_llm.config import load_config

    rows = run_json(capsys, "ppl", pipeline(), "--text", TEXT, "--lengths", "32,64,128", "--same-tokens")
    assert [(r["length"], r["windows"]) for r in rows] == [(32, 4), (64, 2), (128, 1)]
    assert {r["scored_tokens"] for r in rows} == {124}  # 128 tokens less positions 0, 32, 64, 96
    engine = Engine.from_config(load_config(pipeline()))
    ids = engine.tokenize(open(TEXT).read(), add_special_tokens=False)[:128]
    nll = engine.score(ids)  # one window of 128: NLL of tokens 1..127
    kept = torch.tensor([p % 32 != 0 for p in range(1, 128)])
    assert rows[2]["ppl"] == pytest.approx(math.exp(nll[kept].double().mean().item()), rel=1e-4)
    assert rows[0]["ppl"] != rows[2]["ppl"]  # less context, same tokens


def test_passkey_key_nll_in_the_command_and_in_compare(pipeline, tmp_path, capsys):
    rows = run_json(capsys, "passkey", pipeline(), "--lengths", "120", "--depths", "50", "--trials", "1", "--key-nll")
    assert rows[0]["key_nll"] > 0 and "accuracy" in rows[0]
    assert cli.main(["eval", "compare", "--pipelines", pipeline(), "--suite", "passkey", "--lengths", "120",
                     "--depths", "50", "--trials", "1", "--key-nll", "--out", str(tmp_path / "cmp")]) == 0
    assert "key_nll" in capsys.readouterr().out


def test_gap_of_plain_attention_within_its_window_is_one(pipeline, capsys):
    rows = run_json(capsys, "gap", pipeline(), "--text", TEXT, "--context", "64,128", "--target", "16",
                    "--samples", "2")
    for r in rows:
        assert set(r) >= {"context_tokens", "ppl_none", "ppl_pipeline", "ppl_full", "gap_closed"}
        assert r["ppl_pipeline"] == pytest.approx(r["ppl_full"], rel=1e-4)  # (b) equals (c)
        assert r["gap_closed"] == pytest.approx(1.0, abs=1e-3)


def test_gap_reports_log_perplexity_and_no_recent_column_when_everything_is_kept(pipeline, capsys):
    import math

    r = run_json(capsys, "gap", pipeline(), "--text", TEXT, "--context", "64", "--target", "16", "--samples", "2")[0]
    assert not any(k.startswith(("recent", "ppl_recent", "gap_closed_recent")) for k in r)
    ln = {k: math.log(r[f"ppl_{k}"]) for k in ("none", "pipeline", "full")}
    assert r["gap_closed_nats"] == pytest.approx((ln["none"] - ln["pipeline"]) / (ln["none"] - ln["full"]), abs=1e-3)


def test_gap_compares_a_pipeline_that_keeps_less_with_the_last_k_raw_tokens(pipeline, tiny_model_dir):
    """The recent column: the target after only the last k raw tokens of the context, k = positions kept."""
    import math

    import torch

    from longctx_llm import Engine
    from longctx_llm.config import load_config
    from longctx_llm.eval import evaluate

    engine = Engine.from_config(load_config(pipeline(strategy="{name: streaming, sink_tokens: 0, window: 32}")))
    ids = engine.tokenize(open(TEXT).read(), add_special_tokens=False)
    row = evaluate.gap(engine, ids, [64], 16, 2, recent_multiples=(1, 2))[0]
    assert row["recent_tokens"] == 16  # a 32-token window holding the 16 target tokens keeps 16 of the context
    nll = []
    for s in evaluate.spans(ids, 80, 2, 0):
        logits = evaluate.plain_logits(engine, s[64 - 16 :])[16:]
        nll.append(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(s[65:]), reduction="none"))
    assert row["ppl_recent"] == pytest.approx(math.exp(torch.cat(nll).mean().item()), rel=1e-4)
    assert set(row) >= {"gap_closed_recent", "gap_closed_recent_nats", "gap_closed_nats", "ppl_recent_x2"}
    nll = []
    for s in evaluate.spans(ids, 80, 2, 0):  # x2: the last 32 raw tokens of the context
        logits = evaluate.plain_logits(engine, s[64 - 32 :])[32:]
        nll.append(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(s[65:]), reduction="none"))
    assert row["ppl_recent_x2"] == pytest.approx(math.exp(torch.cat(nll).mean().item()), rel=1e-4)


def test_gap_past_the_window_has_no_full_figure(pipeline, capsys):
    rows = run_json(capsys, "gap", pipeline(strategy="{name: dca}"), "--text", TEXT, "--context", "600",
                    "--target", "16", "--samples", "1")
    assert rows[0]["ppl_full"] is None and rows[0]["gap_closed"] is None and rows[0]["ppl_pipeline"] > 0


def test_recall_rows(pipeline, capsys):
    rows = run_json(capsys, "recall", pipeline(), "--text", TEXT, "--context", "64", "--span", "8", "--cue", "4",
                    "--samples", "2")
    r = rows[0]
    assert set(r) >= {"context_tokens", "acc_none", "acc_pipeline", "acc_full"}
    assert r["acc_pipeline"] == pytest.approx(r["acc_full"])
    assert 0 <= r["acc_none"] <= 1


def test_passkey_and_speed_rows_and_lengths_a_pipeline_cannot_take(pipeline, capsys):
    p = pipeline(strategy="{name: full, max_length: 200}")
    rows = run_json(capsys, "passkey", p, "--lengths", "120,400", "--depths", "50", "--trials", "1")
    assert rows[0]["length"] == 120 and 0 <= rows[0]["accuracy"] <= 1 and "50%" in rows[0]["by_depth"]
    assert "window" in rows[1]["error"]  # not applicable, with the reason; not a crash
    rows = run_json(capsys, "speed", p, "--lengths", "64,400", "--decode-tokens", "4")
    assert rows[0]["prefill_s"] > 0 and rows[0]["decode_tokens_per_s"] > 0 and rows[0]["peak_memory_mib"] > 0
    assert "error" in rows[1]


def test_compare_writes_table_csv_json(pipeline, tmp_path, capsys):
    out = tmp_path / "cmp"
    a, b = pipeline("full"), pipeline("dca", strategy="{name: dca}")
    code = cli.main(["eval", "compare", "--pipelines", f"{a},{b}", "--suite", "ppl,speed", "--text", TEXT,
                     "--lengths", "64,128", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "== ppl" in printed and "== speed" in printed
    data = json.loads((out / "results.json").read_text())["results"]
    assert {r["pipeline"] for r in data} == {"full", "dca"} and {r["suite"] for r in data} == {"ppl", "speed"}
    assert (out / "results.csv").read_text().startswith("pipeline,suite")


@pytest.mark.parametrize(
    "args,message",
    [
        (["gap", "--context", "-5"], "--context: each value must be >= 1"),
        (["gap", "--samples", "0"], "--samples: must be > 0"),
        (["gap", "--context", "999999"], "exceeds|has only"),
        (["recall", "--context", "16", "--span", "64"], None),
        (["ppl", "--lengths", "10,x"], "--lengths: expected comma-separated integers"),
        (["passkey", "--depths", "150"], "--depths"),
    ],
)
def test_bad_arguments_give_clear_errors(pipeline, capsys, args, message):
    code = cli.main(["eval", args[0], pipeline(), "--text", TEXT, *args[1:], "--json"])
    captured = capsys.readouterr()
    if message is None:  # a sample that cannot be made is a row with its reason
        assert code == 0 and "exceeds the context" in json.loads(captured.out)["results"][0]["error"]
    else:
        assert code == 2
        import re

        assert re.search(message, captured.err), captured.err


def test_compare_refuses_unknown_suites(pipeline, capsys):
    assert cli.main(["eval", "compare", "--pipelines", pipeline(), "--suite", "ppl,vibes"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_spans_are_deterministic_and_spread():
    ids = list(range(1000))
    a = spans(ids, 100, 5, seed=3)
    assert a == spans(ids, 100, 5, seed=3) and len({s[0] for s in a}) == 5
    assert a[-1][-1] <= 999


def test_speed_sizes_a_preallocated_cache_as_generation_does(tiny_model, monkeypatch):
    """`eval speed` reserves prompt + decode tokens up front, as the generation loop does, so a preallocated cache
    is measured at the size a user's request gets (not grown in steps past it)."""
    from longctx_llm import Engine
    from longctx_llm.eval import evaluate
    from longctx_llm.kernels import StaticCache

    engine = Engine(tiny_model("llama", max_positions=2048), strategy={"name": "full", "static_cache": True})
    sizes = []
    original = StaticCache.reserve
    monkeypatch.setattr(StaticCache, "reserve", lambda self, tokens: sizes.append(tokens) or original(self, tokens))
    rows = evaluate.speed(engine, list(range(100, 400)), [600], decode_tokens=4)
    assert "error" not in rows[0] and sizes == [604]


def test_chat_reports_fact_and_markup_rates(pipeline, capsys, tmp_path):
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps({"chats": [{"turns": ["I am Ada.", "Hello?", "Who am I?"], "answer": ["Ada"]}] * 2}))
    rows = run_json(capsys, "chat", pipeline(memory="{name: buffer, max_turns: 1}"), "--chats", str(chats),
                    "--max-new-tokens", "4")
    r = rows[0]
    assert r["memory"] == "buffer" and r["chats"] == 2 and 0 <= r["fact_rate"] <= 1 and 0 <= r["markup_rate"] <= 1
    assert len(r["replies"]) == 2 and all(set(x) == {"question", "reply", "fact", "markup"} for x in r["replies"])


@pytest.mark.parametrize("content", ["[]", '{"chats": [{"turns": [], "answer": ["x"]}]}', "not json",
                                     '{"chats": [{"turns": ["hi"], "answer": [""]}]}'])
def test_chat_refuses_a_bad_chats_file(pipeline, capsys, tmp_path, content):
    chats = tmp_path / "chats.json"
    chats.write_text(content)
    assert cli.main(["eval", "chat", pipeline(), "--chats", str(chats)]) == 2
    assert "--chats" in capsys.readouterr().err


def test_docs_markup_is_found_and_plain_replies_pass():
    from longctx_llm.eval.evaluate import default_chats, docs_markup

    for text in ["Use the :meth:`get_job` method", ".. data:: name", "Call ``open()`` first", ">>> print(1)",
                 "=head1 NAME", "See C<perlfunc> for more", "Title\n=====\n", "NAME\n  ls - list"]:
        assert docs_markup(text), text
    for text in ["Your job is lighthouse keeper.", "You live in Porto. It is a lovely city!", "1 - 2 = -1",
                 "Sure: eggs, toast and tea."]:
        assert docs_markup(text) is None, text
    assert len(default_chats()) >= 20


def test_recall_reads_past_a_strategy_raw_tail(tiny_model, monkeypatch):
    """A strategy that keeps its last t tokens raw (RCC's raw_tail): recall's cue grows so that the token predicting
    the span's first is t + 1 tokens past the context, never reading it raw."""
    from longctx_llm import Engine
    from longctx_llm.eval import evaluate

    e = Engine(tiny_model("llama"))
    instr = len(e.tokenize(evaluate.RECALL_INSTRUCTION, add_special_tokens=False))
    ids = [3 + i % 200 for i in range(400)]
    (row,) = evaluate.recall(e, ids, [64], span=8, cue=4, samples=1)
    assert row["cue"] == 4  # plain attention promises no raw tail
    monkeypatch.setattr(type(e.strategy), "raw_tail", lambda self: instr + 10)
    (row,) = evaluate.recall(e, ids, [64], span=8, cue=4, samples=1)
    assert row["cue"] == 11 and instr + row["cue"] - 1 == e.strategy.raw_tail()


def test_recall_draws_spans_before_a_memory_raw_tail(tiny_model, monkeypatch):
    """A memory that keeps the end of the compressed turns raw (CCM's raw_tail) holds the context's last tokens as
    text: recall draws its spans before them (and says so when they leave no room)."""
    from longctx_llm import Engine
    from longctx_llm.eval import evaluate

    e = Engine(tiny_model("llama"))
    ids = [3 + i % 200 for i in range(400)]
    monkeypatch.setattr(evaluate, "uses_memory", lambda engine: True)
    monkeypatch.setattr(type(e.memory), "raw_tail", lambda self: 50)
    starts = []
    real = evaluate.random.Random

    class Spy(real):
        def randint(self, a, b):
            starts.append(b)
            return super().randint(a, b)

    monkeypatch.setattr(evaluate.random, "Random", Spy)
    (row,) = evaluate.recall(e, ids, [64], span=8, cue=4, samples=2, turn_tokens=32)
    assert starts == [64 - 4 - 8 - 50] * 2 and "error" not in row
    (row,) = evaluate.recall(e, ids, [60], span=8, cue=4, samples=1, turn_tokens=32)
    assert "raw tail of 50" in row["error"]
