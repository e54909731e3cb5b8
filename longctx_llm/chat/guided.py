"""Schema-guided JSON: the decoder writes the structure, the model only fills in the values.

A 135M model asked for JSON usually writes something close to JSON. Structured output and forced tool calls
must not depend on that, so :func:`guided_json` emits the skeleton of a JSON-schema instance itself (braces,
keys, quotes, commas) and asks the model only for each value, with the value's own constraint:

- ``string``: free text up to the closing quote (or a newline);
- ``integer`` / ``number``: a short generation read as a number, checked against min/max;
- ``boolean``, ``enum``, ``const``, tool names: the option the model gives the highest likelihood (scored, not
  sampled), so the answer is always one of the valid values;
- ``object`` (properties in schema order), ``array`` (the model's likelihood decides when it closes),
  ``$ref``, ``anyOf``/``type`` lists with ``null`` (the non-null branch is generated).

Everything else (``oneOf`` of several objects, ``patternProperties``, free-form ``additionalProperties``...)
is refused up front by :func:`check_schema` with the path and the reason: a schema the decoder cannot satisfy is
an error, never a silently wrong answer. Model-side work reuses one cache per call (the prompt is fed once;
each step feeds only the new tokens) when the strategy can rewind.

>>> from longctx_llm import Engine
>>> engine = Engine("smollm2-135m-instruct")
>>> schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
>>> guided_json(engine, engine.render_chat([{"role": "user", "content": "Capital of France?"}]), schema)  # doctest: +SKIP
{'city': 'Paris'}
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Optional, Sequence

import torch

from ..config import GenerationConfig
from ..errors import InputError, LongctxError
from ..runtime.generation import generate, run_to_end

logger = logging.getLogger(__name__)

SUPPORTED = "object, array, string, integer, number, boolean, null, enum, const, $ref, anyOf/type lists with null"
_INT_RE = re.compile(r"\s*(-?\d+)")
_NUM_RE = re.compile(r"\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
MAX_ARRAY_ITEMS = 16


class GuidedDecodingError(LongctxError, ValueError):
    """The model's value could not be read as the type the schema asks for (names the path and the text)."""


def _resolve(schema: Any, defs: dict, path: str) -> dict:
    if not isinstance(schema, dict):
        raise InputError(f"schema at {path}: expected a JSON-schema object, got {schema!r}")
    seen = 0
    while "$ref" in schema:
        ref = schema["$ref"]
        m = re.match(r"^#/(\$defs|definitions)/(.+)$", ref) if isinstance(ref, str) else None
        if m is None or m.group(2) not in defs:
            raise InputError(f"schema at {path}: unresolvable $ref {ref!r} (only local #/$defs/... refs)")
        schema = {**defs[m.group(2)], **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
        if seen > 32:
            raise InputError(f"schema at {path}: recursive $ref {ref!r} cannot be generated")
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if not (isinstance(b, dict) and b.get("type") == "null")]
            if len(branches) != 1:
                raise InputError(
                    f"schema at {path}: {key} with {len(branches)} non-null branches cannot be generated "
                    f"(supported: {SUPPORTED})"
                )
            rest = {k: v for k, v in schema.items() if k != key}
            return _resolve({**rest, **branches[0]}, defs, path)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return _resolve({**rest, **schema["allOf"][0]}, defs, path)
    t = schema.get("type")
    if isinstance(t, list):
        types = [x for x in t if x != "null"] or ["null"]
        if len(types) != 1:
            raise InputError(f"schema at {path}: type {t!r} has several non-null types (supported: {SUPPORTED})")
        schema = {**schema, "type": types[0]}
    return schema


def _kind(schema: dict, path: str) -> str:
    if "const" in schema:
        return "const"
    if "enum" in schema:
        if not schema["enum"]:
            raise InputError(f"schema at {path}: empty enum, no value can satisfy it")
        return "enum"
    t = schema.get("type")
    if t is None and "properties" in schema:
        t = "object"
    if t in ("object", "array", "string", "integer", "number", "boolean", "null"):
        return t
    for bad in ("allOf", "not", "if", "patternProperties"):
        if bad in schema:
            raise InputError(f"schema at {path}: {bad!r} cannot be generated (supported: {SUPPORTED})")
    raise InputError(f"schema at {path}: type {t!r} cannot be generated (supported: {SUPPORTED})")


def check_schema(schema: dict, defs: Optional[dict] = None, path: str = "$") -> None:
    """Raise :class:`InputError` naming the first part of ``schema`` the guided decoder cannot produce."""
    defs = {**(schema.get("$defs") or {}), **(schema.get("definitions") or {}), **(defs or {})} if isinstance(
        schema, dict
    ) else (defs or {})
    s = _resolve(schema, defs, path)
    kind = _kind(s, path)
    if kind == "object":
        extra = s.get("additionalProperties")
        if not s.get("properties") and isinstance(extra, dict) and extra:
            raise InputError(
                f"schema at {path}: a free-form mapping (additionalProperties) has no keys to generate; "
                "give it properties"
            )
        for name, sub in (s.get("properties") or {}).items():
            check_schema(sub, defs, f"{path}.{name}")
    elif kind == "array":
        items = s.get("items")
        if not isinstance(items, dict):
            raise InputError(f"schema at {path}: arrays need one items schema, got {items!r}")
        check_schema(items, defs, f"{path}[]")


class _Cursor:
    """One model cache for a whole guided call: feed only what is new, rewind to branch."""

    def __init__(self, engine, params: GenerationConfig):
        self.engine = engine
        self.loaded = engine.loaded
        self.params = params
        self.rewind_ok = engine.strategy.capabilities.rewind
        self.state = None
        self.cached: list[int] = []

    def _sync(self, ids: list[int], keep_last: bool) -> list[int]:
        """Make the cache hold a prefix of ``ids``; return the tokens still to feed (at least one)."""
        self.engine.check_fits(len(ids))
        if self.state is None or not self.rewind_ok:
            self.state = self.engine.strategy.new_state(self.loaded, 1)
            self.cached = []
        common = 0
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            common += 1
        if keep_last and common == len(ids):
            common -= 1
        if common < len(self.cached):
            self.state.rewind(common)
            del self.cached[common:]
        feed = ids[common:]
        return feed

    def generate(self, text: str, stop: Sequence[str], max_new_tokens: int) -> str:
        ids = self.engine.tokenize(text, add_special_tokens=False)
        feed = self._sync(ids, keep_last=True)
        self.cached.extend(feed)
        params = self.params.model_copy(update={"stop": list(stop), "max_new_tokens": max_new_tokens})
        tensor = torch.tensor([feed], dtype=torch.long, device=self.loaded.device)
        gen = generate(
            self.state,
            self.loaded.tokenizer,
            tensor,
            None,
            params,
            self.loaded.eos_token_ids,
            window=self.engine.context_window,
            fed_tokens=[self.cached],
            prompt_tokens=[len(ids)],
        )
        completion = run_to_end(gen)[0]
        self.generated_tokens = getattr(self, "generated_tokens", 0) + completion.completion_tokens
        return completion.text

    @torch.inference_mode()
    def choose(self, text: str, options: Sequence[str]) -> int:
        """Index of the option greedy decoding picks after ``text`` when only the options are allowed.

        Token by token, the most likely next token among those that continue a still-possible option (what a
        constrained greedy decoder does); an option that is a token prefix of another loses to the longer one.
        """
        if len(options) == 1:
            return 0
        ids = self.engine.tokenize(text, add_special_tokens=False)
        toks = [self.engine.tokenize(o, add_special_tokens=False) for o in options]
        feed = self._sync(ids, keep_last=True)
        self.cached.extend(feed)
        device = self.loaded.device
        logits = self.state.forward(torch.tensor([feed], device=device))[0, -1]  # (V,)
        alive = list(range(len(options)))
        depth = 0
        while len(alive) > 1:
            nexts = {toks[i][depth] for i in alive if len(toks[i]) > depth}
            if not nexts:
                break
            best = max(nexts, key=lambda t: float(logits[t]))
            alive = [i for i in alive if len(toks[i]) > depth and toks[i][depth] == best]
            if len(alive) > 1:
                self.engine.check_fits(len(self.cached) + 1)
                logits = self.state.forward(torch.tensor([[best]], device=device))[0, -1]
                self.cached.append(best)
            depth += 1
        return alive[0]


class _Guide:
    def __init__(self, cursor: _Cursor, prompt: str, defs: dict, max_value_tokens: int):
        self.cursor = cursor
        self.prompt = prompt
        self.out = ""
        self.defs = defs
        self.max_value_tokens = max_value_tokens

    def emit(self, s: str) -> None:
        self.out += s

    def value(self, schema: dict, path: str) -> Any:
        s = _resolve(schema, self.defs, path)
        kind = _kind(s, path)
        here = self.prompt + self.out
        if kind == "const":
            self.emit(json.dumps(s["const"], ensure_ascii=False))
            return s["const"]
        if kind in ("enum", "boolean"):
            options = list(s["enum"]) if kind == "enum" else [True, False]
            texts = [json.dumps(o, ensure_ascii=False) for o in options]
            i = self.cursor.choose(here, texts)
            self.emit(texts[i])
            return options[i]
        if kind == "null":
            self.emit("null")
            return None
        if kind == "string":
            self.emit('"')
            raw = self.cursor.generate(here + '"', ['"', "\n"], self.max_value_tokens)
            raw = raw.rstrip("\\")
            self.emit(json.dumps(raw, ensure_ascii=False)[1:])
            return raw
        if kind in ("integer", "number"):
            raw = self.cursor.generate(here, [",", "}", "]", "\n"], 12)
            m = (_INT_RE if kind == "integer" else _NUM_RE).match(raw)
            if m is None:
                raise GuidedDecodingError(f"schema at {path}: the model wrote {raw!r} where an {kind} was required")
            v: Any = int(m.group(1)) if kind == "integer" else float(m.group(1))
            for key, ok in (
                ("minimum", lambda b: v >= b),
                ("maximum", lambda b: v <= b),
                ("exclusiveMinimum", lambda b: v > b),
                ("exclusiveMaximum", lambda b: v < b),
            ):
                if key in s and not ok(s[key]):
                    raise GuidedDecodingError(f"schema at {path}: the model chose {v}, which breaks {key}={s[key]}")
            self.emit(json.dumps(v))
            return v
        if kind == "object":
            props = s.get("properties") or {}
            self.emit("{")
            result = {}
            for n, (key, sub) in enumerate(props.items()):
                self.emit(("" if n == 0 else ", ") + json.dumps(key) + ": ")
                result[key] = self.value(sub, f"{path}.{key}")
            self.emit("}")
            return result
        if kind == "array":
            items = s["items"]
            lo, hi = int(s.get("minItems", 0)), int(s.get("maxItems", MAX_ARRAY_ITEMS))
            self.emit("[")
            result = []
            while len(result) < hi:
                if len(result) >= lo:
                    sep = ", " if result else ""
                    opener = {"string": '"', "object": "{", "array": "["}.get(_kind(_resolve(items, self.defs, path), path))
                    if opener is not None and self.cursor.choose(self.prompt + self.out, ["]", sep + opener]) == 0:
                        break
                    if opener is None and result and self.cursor.choose(self.prompt + self.out, ["]", ","]) == 0:
                        break
                if result:
                    self.emit(", ")
                result.append(self.value(items, f"{path}[{len(result)}]"))
            self.emit("]")
            return result
        raise InputError(f"schema at {path}: {kind} cannot be generated (supported: {SUPPORTED})")


def guided_json(
    engine,
    prompt: str,
    schema: dict,
    *,
    prefix: str = "",
    params: Optional[GenerationConfig] = None,
    max_value_tokens: Optional[int] = None,
) -> tuple[Any, str, int]:
    """Generate an instance of ``schema`` after ``prompt + prefix``.

    Returns ``(value, json_text, generated_tokens)``. ``prompt`` is already rendered (chat template applied);
    ``params`` carries temperature/top-p/seed (its stop strings are not used: the skeleton decides where values
    end); ``max_value_tokens`` bounds each free-text value (default: ``params.max_new_tokens``).
    """
    check_schema(schema)
    params = params or engine.generation
    defs = {**(schema.get("$defs") or {}), **(schema.get("definitions") or {})}
    cursor = _Cursor(engine, params)
    guide = _Guide(cursor, prompt + prefix, defs, max_value_tokens or params.max_new_tokens)
    value = guide.value(schema, "$")
    return value, guide.out, getattr(cursor, "generated_tokens", 0)


def decode_tool_call(engine, prompt: str, specs: Sequence[Any], params: Optional[GenerationConfig] = None):
    """Write one tool call after ``prompt``, which ends with an opened ``<tool_call>``.

    The tool is the one greedy decoding picks among ``specs`` (:class:`longctx_llm.chat.tools.ToolSpec`); its
    arguments are decoded under the tool's schema, so the call always names a bound tool and validates. Used for
    a forced ``tool_choice`` and for a reply that opened a call by itself. Returns ``(call, wire_text)`` with
    ``call = {"id", "name", "arguments"}`` and the text of the call as the model would have written it.
    """
    from . import tools  # tools never imports this module; the import stays one-way

    if not specs:
        raise InputError("decode_tool_call: no tools to call")
    spec = specs[choose(engine, prompt + '{"name": "', [s.name + '"' for s in specs], params)]
    prefix = f'{{"name": {json.dumps(spec.name)}, "arguments": '
    args, text, _ = guided_json(engine, prompt, spec.parameters, prefix=prefix, params=params)
    call = {"id": tools.new_call_id(), "name": spec.name, "arguments": args}
    return call, prefix + text + "}" + tools.TOOL_CALL_CLOSE


def schema_prompt(schema: dict) -> str:
    """The instruction that tells the model what the guided JSON is for (values follow the descriptions)."""
    return "Reply with one JSON object that follows this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)


def choose(engine, prompt: str, options: Sequence[str], params: Optional[GenerationConfig] = None) -> int:
    """Index of the most likely continuation of ``prompt`` among ``options`` (e.g. which tool to call)."""
    if not options:
        raise InputError("choose: no options given")
    return _Cursor(engine, params or engine.generation).choose(prompt, list(options))
