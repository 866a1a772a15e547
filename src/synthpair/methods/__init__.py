"""Generation methods: how a (image, mask) pair is represented, trained and sampled.

Each method implements the :class:`~synthpair.methods.base.Method` protocol and is registered by name, so
the trainer (:mod:`synthpair.training`) and the generator (:mod:`synthpair.synthesis`) never branch on it.
"""
from .base import DataInfo, Method, available_methods, get_method, register_method
from .generate import synthesize_batch

__all__ = ["DataInfo", "Method", "get_method", "register_method", "available_methods", "synthesize_batch"]
