"""Plugin discovery through ``importlib.metadata`` entry points.

Groups: ``longctx_llm.strategies``, ``longctx_llm.memories``, ``longctx_llm.components``, ``longctx_llm.trainers``
(adapter training commands: ``longctx train NAME``) and ``longctx_llm.commands`` (subcommands of ``longctx`` that
other distributions add, e.g. ``longctx serve``: an object with ``help``, ``add_arguments(parser)`` and
``run(args) -> int``; the core never imports their packages). Built-ins register the same way (this package's own
pyproject). Two distributions claiming one name is an error when that name is used,
and ``longctx plugins`` shows the conflict. Tests register fakes with :func:`register` / :func:`unregister`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional

from .errors import PluginError

logger = logging.getLogger(__name__)

GROUPS = {
    "strategy": "longctx_llm.strategies",
    "memory": "longctx_llm.memories",
    "component": "longctx_llm.components",
    "trainer": "longctx_llm.trainers",
    "command": "longctx_llm.commands",
}


@dataclass
class PluginInfo:
    name: str
    kind: str
    value: str  # "module:attr"
    distribution: str
    version: str
    _obj: Any = field(default=None, repr=False)
    conflicts: list["PluginInfo"] = field(default_factory=list, repr=False)

    def load(self) -> Any:
        if self._obj is None:
            try:
                self._obj = metadata.EntryPoint(self.name, self.value, GROUPS[self.kind]).load()
            except Exception as e:  # a broken third-party plugin must not take the process down
                raise PluginError(
                    f"{self.kind} plugin {self.name!r} from {self.distribution} {self.version} failed to load "
                    f"({self.value}): {type(e).__name__}: {e}"
                ) from e
        return self._obj


_lock = threading.Lock()
_discovered: Optional[dict[str, dict[str, PluginInfo]]] = None
_manual: dict[str, dict[str, PluginInfo]] = {k: {} for k in GROUPS}


def _discover() -> dict[str, dict[str, PluginInfo]]:
    found: dict[str, dict[str, PluginInfo]] = {k: {} for k in GROUPS}
    seen: set[tuple[str, str, str, str]] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            kind = next((k for k, g in GROUPS.items() if g == ep.group), None)
            if kind is None:
                continue
            key = (kind, ep.name, ep.value, dist_name)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            info = PluginInfo(ep.name, kind, ep.value, dist_name, dist.version)
            existing = found[kind].get(ep.name)
            if existing is None:
                found[kind][ep.name] = info
            elif existing.distribution != dist_name or existing.value != ep.value:
                existing.conflicts.append(info)
    return found


def refresh() -> None:
    """Forget discovered plugins (after installing a distribution at run time)."""
    global _discovered
    with _lock:
        _discovered = None


def _all() -> dict[str, dict[str, PluginInfo]]:
    global _discovered
    with _lock:
        if _discovered is None:
            _discovered = _discover()
        merged = {k: dict(v) for k, v in _discovered.items()}
    for kind, items in _manual.items():
        merged[kind].update(items)
    return merged


def register(kind: str, name: str, obj: Any, distribution: str = "<registered>") -> None:
    """Register an object directly (tests, notebooks); overrides an entry point of the same name."""
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r} (valid: {', '.join(GROUPS)})")
    _manual[kind][name] = PluginInfo(name, kind, f"<{obj!r}>", distribution, "-", _obj=obj)


def unregister(kind: str, name: str) -> None:
    _manual.get(kind, {}).pop(name, None)


def available(kind: str) -> list[PluginInfo]:
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r} (valid: {', '.join(GROUPS)})")
    return sorted(_all()[kind].values(), key=lambda p: p.name)


def names(kind: str) -> list[str]:
    return [p.name for p in available(kind)]


def info(kind: str, name: str) -> PluginInfo:
    items = _all().get(kind)
    if items is None:
        raise PluginError(f"unknown plugin kind {kind!r} (valid: {', '.join(GROUPS)})")
    if name not in items:
        raise PluginError(f"unknown {kind} {name!r} (installed: {', '.join(sorted(items)) or 'none'})")
    plugin = items[name]
    if plugin.conflicts:
        claims = ", ".join(f"{p.distribution} ({p.value})" for p in [plugin, *plugin.conflicts])
        raise PluginError(f"{kind} name {name!r} is claimed by several distributions: {claims}; uninstall one")
    return plugin


def get(kind: str, name: str) -> Any:
    """The class (or factory) registered as ``name`` in ``kind``."""
    return info(kind, name).load()


def all_plugins() -> list[PluginInfo]:
    return [p for kind in GROUPS for p in available(kind)]
