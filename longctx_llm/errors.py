"""Exception types of longctx-llm.

Every error a user can cause derives from :class:`LongctxError`, so callers can catch one type. Messages name the
bad value and the valid choices.
"""

from __future__ import annotations


class LongctxError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(LongctxError, ValueError):
    """A pipeline file or an option is invalid (names the field path and the bad value)."""


class PluginError(LongctxError, LookupError):
    """A strategy, memory or component is unknown, or two plugins claim one name."""


class ModelLoadError(LongctxError, OSError):
    """A model source cannot be resolved or loaded (unknown alias, missing path, corrupt GGUF)."""


class InputError(LongctxError, ValueError):
    """A request is invalid: empty prompt, empty stop string, unsupported message role..."""


class ContextWindowError(InputError):
    """A prompt does not fit in the active strategy's context window."""


class SessionError(LongctxError):
    """A session cannot be saved, restored or found."""


class UnsupportedModelError(LongctxError, ValueError):
    """The model architecture does not support the requested strategy."""


class AdapterError(LongctxError, ValueError):
    """Trained adapter weights are missing, corrupted, or made for another model."""


class ResourceError(LongctxError, MemoryError):
    """The device ran out of memory for a request; the engine freed what it could and serves the next one."""


class BusyError(LongctxError):
    """Too many requests are running and waiting; the request was not started (the server answers 503)."""
