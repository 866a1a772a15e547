"""Generation methods: how a (image, mask) pair is represented, trained and sampled.

Each method subclasses :class:`~synthpair.methods.base.Method` (explicit hooks with documented defaults) and is
registered by name; the trainer (:mod:`synthpair.training`), the export loader and synthesis
(:mod:`synthpair.synthesis`) read its hooks and attributes and never branch on its name.
"""
from .base import DataInfo, Draws, Method, Shard, available_methods, get_method, methods_where, register_method
from .generate import synthesize_batch

__all__ = ["DataInfo", "Draws", "Method", "Shard", "get_method", "register_method", "available_methods",
           "methods_where", "synthesize_batch"]
