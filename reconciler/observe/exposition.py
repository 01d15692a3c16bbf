"""The Prometheus text format (0.0.4), written fast: what every family of ``/metrics`` becomes.

The agent's metrics text is built from prepared strings rather than through
``prometheus_client.generate_latest``: the per-task lines are most of a scrape on a busy node,
and the state and usage parts are rendered once per change, not per scrape
(``reconciler.observe.metrics``). This module owns the few rules that text must follow so
Prometheus's own parser reads it exactly as the registry collects it: label escaping, Go's float
format, and leaving out the OpenMetrics-only ``_created`` samples. Tests parse the text back
and compare it with what the registry collects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["CONTENT_TYPE", "SMALL_INTS", "escape", "gauge", "number", "render_families"]

#: The exposition format ``Metrics.render()`` produces (the classic Prometheus text format).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Most values are small counts; their text (Go's float format, "1.0") is looked up, not built.
SMALL_INTS: Final = {float(i): repr(float(i)) for i in range(64)}


def escape(value: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def number(value: float) -> str:
    """A sample value as Prometheus's Go parser reads it (``prometheus_client``'s rules). Hot
    loops look ``SMALL_INTS`` up first and call this only for the rest."""
    small = SMALL_INTS.get(value)
    if small is not None:
        return small
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def render_families(families: Iterable[Metric]) -> str:
    """Classic text format (0.0.4), like ``generate_latest`` but faster and without the
    OpenMetrics-only ``_created`` samples, which the classic format can only carry as
    separate gauges that nobody queries."""
    out: list[str] = []
    for metric in families:
        mtype = metric.type
        name = metric.name + "_total" if mtype == "counter" else metric.name
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        created = metric.name + "_created"
        for sample in metric.samples:
            if sample.name == created:
                continue
            text = number(sample.value)
            if sample.labels:
                labels = ",".join(f'{k}="{escape(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {text}\n")
            else:
                out.append(f"{sample.name} {text}\n")
    return "".join(out)


def gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    """A gauge family of one unlabelled sample."""
    return GaugeMetricFamily(name, doc, value=float(value))
