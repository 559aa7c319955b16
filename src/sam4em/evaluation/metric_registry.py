"""Which streaming metrics :func:`~sam4em.evaluation.evaluate_volumes` runs, in output order.

``METRICS`` maps a metric's name to its class; the built-in families come first, so each class's
scores keep the keys and order of the JSON files sam4em has always written. A new metric is one
:class:`~sam4em.evaluation.streaming_metric.StreamingMetric` subclass and one call::

    register_metric(ForegroundFraction)      # its keys now appear in every class's scores
    unregister_metric("foreground_fraction")  # and are gone again
"""

from __future__ import annotations

from typing import Any

from sam4em.evaluation.metric_families import FlickerMetric, InstanceMetric, OverlapMetric, SurfaceMetric
from sam4em.evaluation.streaming_metric import StreamingMetric

__all__ = ["METRICS", "MetricClass", "register_metric", "unregister_metric"]

#: A metric class (each class's result type differs, hence Any).
MetricClass = type[StreamingMetric[Any]]

METRICS: dict[str, MetricClass] = {
    metric.name: metric for metric in (OverlapMetric, SurfaceMetric, InstanceMetric, FlickerMetric)
}


def register_metric(metric: MetricClass) -> MetricClass:
    """Add ``metric`` to every evaluation from now on (usable as a class decorator).

    Raises ValueError for a name already registered or a key another metric already reports
    (scores would silently overwrite each other).
    """
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered; choose another name")
    taken = {key for registered in METRICS.values() for key in registered.keys}
    clash = sorted(taken.intersection(metric.keys))
    if clash or len(set(metric.keys)) != len(metric.keys):
        raise ValueError(f"metric {metric.name!r} reports keys {clash or list(metric.keys)} twice; rename them")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove the metric registered as ``name`` (KeyError if there is none)."""
    if name not in METRICS:
        raise KeyError(f"no metric named {name!r} is registered (registered: {', '.join(METRICS)})")
    del METRICS[name]
