"""Which streaming metrics :func:`~sam4em.evaluation.evaluate_volumes` runs, in output order.

``METRICS`` maps a metric's name to its class; the built-in families come first, so each class's
scores keep the keys and order of the JSON files sam4em has always written. A new metric is one
:class:`~sam4em.evaluation.streaming_metric.StreamingMetric` subclass and one call::

    register_metric(ForegroundFraction)      # its keys now appear in every class's scores
    unregister_metric("foreground_fraction")  # and are gone again

The views ask the registry what to show, so an added metric appears in them too:
:func:`score_keys` (every key, what the benchmark records), :func:`table_keys` (the columns of
``sam4em evaluate``'s table and the napari *Evaluate* table) and :func:`distance_keys` (the keys
measured in nm or voxels).
"""

from __future__ import annotations

from typing import Any

from sam4em.evaluation.metric_families import FlickerMetric, InstanceMetric, OverlapMetric, SurfaceMetric
from sam4em.evaluation.streaming_metric import StreamingMetric

__all__ = [
    "METRICS",
    "MetricClass",
    "distance_keys",
    "register_metric",
    "score_keys",
    "table_keys",
    "unregister_metric",
]

#: A metric class (each class's result type differs, hence Any).
MetricClass = type[StreamingMetric[Any]]

METRICS: dict[str, MetricClass] = {
    metric.name: metric for metric in (OverlapMetric, SurfaceMetric, InstanceMetric, FlickerMetric)
}


def register_metric(metric: MetricClass) -> MetricClass:
    """Add ``metric`` to every evaluation from now on (usable as a class decorator).

    Raises ValueError for a name already registered, a key another metric already reports
    (scores would silently overwrite each other), or table/distance keys that are not among its keys.
    """
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered; choose another name")
    taken = {key for registered in METRICS.values() for key in registered.keys}
    clash = sorted(taken.intersection(metric.keys))
    if clash or len(set(metric.keys)) != len(metric.keys):
        raise ValueError(f"metric {metric.name!r} reports keys {clash or list(metric.keys)} twice; rename them")
    undeclared = sorted(set(metric.table_keys + metric.distance_keys) - set(metric.keys))
    if undeclared:
        raise ValueError(
            f"metric {metric.name!r} shows keys {undeclared} it does not report; add them to its keys"
        )
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove the metric registered as ``name`` (KeyError if there is none)."""
    if name not in METRICS:
        raise KeyError(f"no metric named {name!r} is registered (registered: {', '.join(METRICS)})")
    del METRICS[name]


def score_keys() -> tuple[str, ...]:
    """Every key of a class's scores, in output order (the registered metrics' ``keys``)."""
    return tuple(key for metric in METRICS.values() for key in metric.keys)


def table_keys() -> tuple[str, ...]:
    """The keys summary tables show, in order (the registered metrics' ``table_keys``)."""
    return tuple(key for metric in METRICS.values() for key in metric.table_keys)


def distance_keys() -> frozenset[str]:
    """The keys measured in the distance unit (the registered metrics' ``distance_keys``)."""
    return frozenset(key for metric in METRICS.values() for key in metric.distance_keys)
