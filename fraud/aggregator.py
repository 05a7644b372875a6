"""Generates, per engine and rule set, the function that fills the aggregate value slots.

It is the straight-line equivalent of FraudFilter._aggregate_values (the reference,
which the tests compare it against): unrolling the per-store loop removes tuple
unpacking, getter calls and kind dispatch from the hot path. As in fraud.compiler the
source is assembled from fixed templates: field names come from the fixed ATTRIBUTES
table and numbers are ints computed by the engine, never text from a rule file;
WindowStore dicts and helpers are passed in the namespace.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from fraud.syntax import ATTRIBUTES
from fraud.windows import distinct_in_window

__all__ = ["generate_aggregator"]

Aggregator = Callable[[Any, Any], list[Any]]


def generate_aggregator(
    stores: list[tuple[tuple[str, ...], Any, list[tuple[int, list[tuple[int, str, str]]]]]],
    slot_count: int,
    uses_first_to_creditor: bool = True,
) -> Aggregator:
    """stores: (key attributes, states dict, [(window_ms, [(slot, kind, distinct field)])]).

    The generated `aggregate(f, pairs) -> list` puts first_to_creditor in slot 0 and
    every aggregate, current payment included, in its slot.
    """
    namespace: dict[str, Any] = {
        "__builtins__": {"len": len},
        "_distinct": distinct_in_window,
        "_bisect": bisect_right,
    }
    lines = [
        "def aggregate(f, pairs):",
        f"    values = [False] * {int(slot_count)}",
        # Skipped when no rule reads it: saves a tuple and a hash per payment.
        "    values[0] = (f.debtor_account, f.creditor_account) not in pairs" if uses_first_to_creditor else "    pass",
        "    at_ms = f.at_ms",
        "    amount = f.amount_minor",
    ]
    for index, (key, states, windows) in enumerate(stores):
        namespace[f"S{index}"] = states
        fields = [ATTRIBUTES[name][0] for name in key]
        nullable = [ATTRIBUTES[name][1] == "str?" for name in key]
        if len(fields) == 1:
            lines.append(f"    k = f.{fields[0]}")
            missing = "k is None" if nullable[0] else ""
        else:
            lines.append(f"    k0 = f.{fields[0]}")
            lines.append(f"    k1 = f.{fields[1]}")
            lines.append("    k = (k0, k1)")
            missing = " or ".join(f"k{i} is None" for i in range(2) if nullable[i])
        if missing:
            lines.append(f"    st = None if {missing} else S{index}.get(k)")
        else:
            lines.append(f"    st = S{index}.get(k)")
        lines.append("    times = st.times_ms if st is not None else None")
        lines.append("    if times:")
        lines.append("        n = len(times)")
        lines.append("        cumulative = st.cumulative_minor")
        lines.append("        last = cumulative[-1]")
        lines.append("        first_ms = times[0]")
        for window_ms, slots in windows:
            window_ms = int(window_ms)
            kinds = {kind for _, kind, _ in slots}
            lines.append(f"    cut = at_ms - {window_ms}")
            if kinds & {"count", "sum"}:
                lines.append("    if not times:")
                lines.append("        count = 0")
                lines.append("        total = 0")
                lines.append("    elif first_ms > cut:")
                lines.append("        count = n")
                lines.append("        total = last - st.dropped_cumulative_minor")
                lines.append("    else:")
                lines.append("        i = _bisect(times, cut)")
                lines.append("        count = n - i")
                lines.append("        total = last - cumulative[i - 1]")
            for slot, kind, field_name in slots:
                slot = int(slot)
                if kind == "count":
                    lines.append(f"    values[{slot}] = count + 1")
                elif kind == "sum":
                    lines.append(f"    values[{slot}] = total + amount")
                elif kind == "distinct":
                    attribute = ATTRIBUTES[field_name][0]
                    tracker = (str(field_name), window_ms)
                    lines.append(f"    values[{slot}] = _distinct(st, {tracker!r}, f.{attribute}, cut)")
                else:
                    raise ValueError(f"unknown aggregate kind {kind!r}")
    lines.append("    return values")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<fraud aggregator>", "exec"), namespace)
    aggregate = namespace["aggregate"]
    aggregate.source = source
    return aggregate
