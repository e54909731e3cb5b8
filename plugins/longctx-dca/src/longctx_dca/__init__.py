"""Dual Chunk Attention (DCA, An et al. 2024, arXiv 2402.17463) for longctx-llm.

Extends a RoPE model's usable context to ~8x its pretraining length without training, by keeping every relative
position the model sees below ``chunk_size`` (< the pretraining length). Use it as ``strategy: {name: dca}``.

The pure attention math (:mod:`longctx_dca.attention`, :mod:`longctx_dca.kernels`) imports only torch, so it can be
benchmarked on a GPU machine without the rest of the package.
"""

__all__ = ["DCAOptions", "DCAStrategy"]


def __getattr__(name):  # lazy: importing the math must not pull pydantic in
    if name == "DCAStrategy":
        from .strategy import DCAStrategy

        return DCAStrategy
    if name == "DCAOptions":
        from .options import DCAOptions

        return DCAOptions
    raise AttributeError(name)
