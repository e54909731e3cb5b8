"""Training samples of ``longctx train ccm``: plain text, chat turns, and dialogues that need an earlier fact.

Every kind yields a batch of token ids (B, sum(seg_lens)) and the segment lengths, with all rows of a batch laid out
alike (the parallel forward shares one layout per batch):

- ``text``: N consecutive segments of the corpus (compress earlier segments, predict the next);
- ``chat``: the same text wrapped in the model's chat template, one user/assistant turn per segment, the first one
  after the template's system header (what a chat session compresses);
- ``fact``: a chat whose first turn states a code word (a vocabulary word or a number), whose middle turns are
  corpus text, and whose last turn asks for it and answers: the answer is predictable only through the memory
  (ISSUE: "synthetic dialogues in which a later turn needs a fact from an earlier one").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from longctx_llm.runtime import templates as chat_mod


@dataclass
class ChatPieces:
    """Token ids of the chat template around messages: system header + user opening, user closing + assistant
    opening, assistant closing, and a later user opening."""

    first_open: list[int]
    to_assistant: list[int]
    close: list[int]
    user_open: list[int]

    @classmethod
    def of(cls, tokenizer) -> "ChatPieces":
        msgs = [{"role": "user", "content": "\x01"}, {"role": "assistant", "content": "\x02"},
                {"role": "user", "content": "\x03"}, {"role": "assistant", "content": "\x04"}]
        text = chat_mod.render(tokenizer, msgs, add_generation_prompt=False)
        a, rest = text.split("\x01", 1)
        b, rest = rest.split("\x02", 1)
        between, rest = rest.split("\x03", 1)
        _, c = rest.split("\x04", 1)
        user_open = between[len(c):] if between.startswith(c) else between
        tok = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return cls(tok(a), tok(b), tok(c), tok(user_open))


class SampleMaker:
    def __init__(self, stream, tokenizer, seed: int = 0):
        self.stream, self.tok = stream, tokenizer
        self.pieces = ChatPieces.of(tokenizer)
        vocab = tokenizer.get_vocab()
        # single-token words ("Ġamber"-style byte-level BPE entries of 5+ lowercase letters)
        self.words = sorted(t for t in vocab if t.startswith("\u0120") and t[1:].isalpha() and t[1:].islower()
                            and len(t) >= 6)
        self.rng = random.Random(seed)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _turn(self, first: bool, user: list[int], assistant: list[int]) -> list[int]:
        p = self.pieces
        return (p.first_open if first else p.user_open) + user + p.to_assistant + assistant + p.close

    def wrapper(self, first: bool) -> int:
        p = self.pieces
        return len(p.first_open if first else p.user_open) + len(p.to_assistant) + len(p.close)

    def seg_lens(self, kind: str, n: int, segments: int) -> tuple[int, ...]:
        if kind == "text":
            return (n,) * segments
        return (n + self.wrapper(True) - self.wrapper(False),) + (n,) * (segments - 1)

    def batch(self, kind: str, batch: int, n: int, segments: int, gen: torch.Generator) -> tuple[torch.Tensor, tuple]:
        lens = self.seg_lens(kind, n, segments)
        if kind == "text":
            return self.stream.sample(batch, n * segments, gen), lens
        rows = [self._chat_row(lens, gen) if kind == "chat" else self._fact_row(lens, gen) for _ in range(batch)]
        return torch.tensor(rows, dtype=torch.long), lens

    def _text(self, count: int, gen) -> list[int]:
        return self.stream.sample(1, max(1, count), gen)[0].tolist()[:count] if count > 0 else []

    def _chat_row(self, lens, gen) -> list[int]:
        row = []
        for i, n in enumerate(lens):
            budget = n - self.wrapper(i == 0)
            text = self._text(budget, gen)
            half = budget // 2
            row += self._turn(i == 0, text[:half], text[half:])
        return row

    def _fact(self) -> tuple[str, str]:
        if self.rng.random() < 0.5 and self.words:
            word = self.rng.choice(self.words)[1:]
            return f"The code word is {word}.", f"What is the code word? The code word is {word}."
        num = str(self.rng.randint(1000, 99999))
        return f"The secret number is {num}.", f"What is the secret number? The secret number is {num}."

    def _fact_row(self, lens, gen) -> list[int]:
        fact, qa = self._fact()
        question, answer = qa.split("? ", 1)
        row = []
        last = len(lens) - 1
        for i, n in enumerate(lens):
            budget = n - self.wrapper(i == 0)
            if i == 0:
                user = self.ids(f" Please remember this. {fact}")
                reply = self.ids(f"Understood. {fact}")
                pad = budget - len(user) - len(reply)
                row += self._turn(True, self._text(pad, gen) + user, reply) if pad >= 0 else self._turn(True, user, reply)[: n]
            elif i == last:
                user, reply = self.ids(" " + question + "?"), self.ids(answer)
                pad = budget - len(user) - len(reply)
                row += self._turn(False, self._text(pad, gen) + user, reply) if pad >= 0 else self._turn(False, user, reply)[:n]
            else:
                text = self._text(budget, gen)
                row += self._turn(False, text[: budget // 2], text[budget // 2 :])
        assert len(row) == sum(lens), (len(row), sum(lens))
        return row
