"""Metrics: pure functions first, then accumulating wrappers (see docs/architecture.md)."""
from .segmentation import (METRICS, SegmentationMetrics, case_metrics, class_metrics, distance_unit,
                           per_case_metrics, summarize)

__all__ = ["METRICS", "SegmentationMetrics", "case_metrics", "class_metrics", "distance_unit",
           "per_case_metrics", "summarize"]
