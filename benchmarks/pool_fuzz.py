"""Random joins, steps and leaves of a bucketed continuous-batching pool against each session decoding alone.

Where decode steps replay CUDA graphs, ``KVPool`` keeps its state across joins and leaves within a batch-size
bucket: rows fill free slots, leave holes and shift in place (``longctx_llm/runtime/batch_pool.py``). This drives a
pool of a tiny random Llama through random operations (short and long prompts, leaves that keep or drop the reply)
and compares every step's logits with each session's own state, for ``full`` and ``dca``. On CUDA the pool's steps
replay captured graphs; the table counts captures and replays.

    python benchmarks/pool_fuzz.py --device cuda --seeds 6      # a GPU
    python benchmarks/pool_fuzz.py --device cpu --seeds 2       # here (no graphs)
"""

from __future__ import annotations

import argparse
import collections
import random
import types

import torch

STRATEGIES = {"full": {}, "dca": {"chunk_size": 24, "local_window": 6}}


def tiny_llama(device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx_llm.model import wrap_model

    tok = types.SimpleNamespace(pad_token_id=2, eos_token_id=2, chat_template="", get_vocab=lambda: {})
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=2,
                      bos_token_id=1, pad_token_id=2)
    return wrap_model(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device), tok, source="tiny")


def fuzz(model, name: str, seed: int, *, ops: int = 120, graphs: bool = False) -> float:
    """Largest |logit difference| between the pool's rows and the sessions alone over ``ops`` random operations."""
    from longctx_llm import registry
    from longctx_llm.runtime.batch_pool import KVPool

    strategy = registry.get("strategy", name)(static_cache=True, cuda_graphs=graphs, **STRATEGIES[name])
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    alone, rows, gained = {}, {}, {}
    pool, serial, worst = KVPool(strategy, model, buckets=True), 0, 0.0
    device = model.device

    def fed(state, token):
        return state.forward(torch.tensor([[token]], device=device))[:, -1]

    for _ in range(ops):
        op = rng.random()
        if (op < 0.3 and len(pool) < 9) or not len(pool):
            owner, serial = f"r{serial}", serial + 1
            n = rng.randint(1, 40) if rng.random() < 0.85 else rng.randint(200, 330)
            prompt = torch.randint(3, 200, (1, n), generator=gen).to(device)
            alone[owner], rows[owner] = strategy.new_state(model), strategy.new_state(model)
            alone[owner].forward(prompt)
            rows[owner].forward(prompt)
            pool.join(owner, rows[owner])
            gained[owner] = 0
        elif op < 0.45:
            owner, keep = rng.choice(pool.owners), rng.random() < 0.5
            pool.leave(owner, rows[owner], gained[owner], keep=keep)
            if keep:  # the session goes on alone from where its row was
                token = int(torch.randint(3, 200, (1,), generator=gen))
                worst = max(worst, (fed(alone[owner], token) - fed(rows[owner], token)).abs().max().item())
            del alone[owner], rows[owner], gained[owner]
        else:
            for _ in range(rng.randint(1, 5)):
                tokens = torch.randint(3, 200, (len(pool),), generator=gen).tolist()
                expected = torch.cat([fed(alone[o], t) for o, t in zip(pool.owners, tokens)])
                worst = max(worst, (pool.step(tokens) - expected).abs().max().item())
                for o in pool.owners:
                    gained[o] += 1
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--ops", type=int, default=120)
    args = p.parse_args(argv)
    from longctx_llm.kernels.cuda_graphs import GraphRunner

    counts = collections.Counter()
    capture, run = GraphRunner._capture, GraphRunner.run

    def counted_capture(self, *a):
        counts["captures"] += 1
        return capture(self, *a)

    def counted_run(self, key, *a):
        counts["replays"] += key in self._graphs
        return run(self, key, *a)

    GraphRunner._capture, GraphRunner.run = counted_capture, counted_run
    model, graphs = tiny_llama(args.device), args.device.startswith("cuda")
    print(f"| strategy | seeds | ops each | max abs logit difference | over 1e-3 |\n| --- | ---: | ---: | ---: | ---: |")
    for name in STRATEGIES:
        diffs = [fuzz(model, name, seed, ops=args.ops, graphs=graphs) for seed in range(args.seeds)]
        print(f"| {name} | {args.seeds} | {args.ops} | {max(diffs):.1e} | {sum(d > 1e-3 for d in diffs)} |")
    print(f"device {args.device}: {counts['captures']} graph captures, {counts['replays']} replays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
