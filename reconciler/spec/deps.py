"""Dependencies between tasks (``dependsOn``), checked over a node's whole desired set.

A task may only depend on tasks of the same desired set, and the dependencies must not form a
cycle: either would hold its instances forever. This is checked wherever a whole set is known:
the desired directory (with the file and line of each entry) and the fleet session's full
assignment of a node.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.session import DesiredTask

__all__ = ["dependency_problems"]


def dependency_problems(tasks: Mapping[str, DesiredTask]) -> dict[str, list[tuple[int, str]]]:
    """Every bad dependency, by task name, as (index in its ``dependsOn``, message).

    Unknown names are reported at their entry; a cycle is reported on every task in it, at
    the entry that leads around it, naming the whole cycle.
    """
    out: dict[str, list[tuple[int, str]]] = {}
    for name, task in tasks.items():
        for i, dep in enumerate(task.spec.depends_on):
            if dep.task not in tasks:
                out.setdefault(name, []).append(
                    (i, f"depends on {dep.task!r}, which is not in the desired set")
                )
    for cycle in _cycles(tasks):
        members = set(cycle)
        closed = len(cycle) > 1 and any(
            d.task == cycle[0] for d in tasks[cycle[-1]].spec.depends_on
        )
        text = " -> ".join([*cycle, cycle[0]]) if closed else "among " + ", ".join(sorted(members))
        for k, name in enumerate(cycle):
            after = cycle[(k + 1) % len(cycle)]
            deps = tasks[name].spec.depends_on
            i = next(
                (j for j, d in enumerate(deps) if d.task == after),
                next(j for j, d in enumerate(deps) if d.task in members),
            )
            out.setdefault(name, []).append((i, f"dependency cycle: {text}"))
    return out


def _cycles(tasks: Mapping[str, DesiredTask]) -> list[list[str]]:
    """The cycles of the dependency graph (one per strongly connected part), iteratively."""
    graph = {
        name: [d.task for d in t.spec.depends_on if d.task in tasks] for name, t in tasks.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            edges = graph[node]
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work and work[-1][0] != node:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                part: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    part.append(top)
                    if top == node:
                        break
                if len(part) > 1:
                    cycles.append(_ordered(part[::-1], graph))
    return cycles


def _ordered(part: list[str], graph: Mapping[str, list[str]]) -> list[str]:
    """The members of one strongly connected part, following its edges from the smallest name
    as far as they go (for a simple cycle, the whole cycle); the rest appended in order."""
    members = set(part)
    start = min(part)
    order = [start]
    seen = {start}
    node = start
    while True:
        nxt = next((d for d in graph[node] if d in members and d not in seen), None)
        if nxt is None:
            break
        order.append(nxt)
        seen.add(nxt)
        node = nxt
    return order + sorted(members - seen)
