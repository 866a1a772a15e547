"""Segmentation: segmenter builders, mixing strategies, paired augmentation, leakage guard, train + evaluate.

Heavy modules are imported lazily; use ``from synthpair.segmentation.train import SegmentConfig, segment``.
"""
