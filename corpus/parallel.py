"""Bounded fan-out of plain functions as Ray tasks, on the driver's node, results in call order.

The clean stage's tasks read and write files in the stage's local staging and work folders, so they
are pinned to the node the driver runs on: on a multi-node cluster cleaning uses that node's CPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def map_tasks(
    fn: Callable[..., Any],
    calls: Iterable[tuple[Any, ...]],
    parallel: bool = True,
    max_in_flight: int | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """[fn(*args) for args in calls], as Ray tasks of one CPU each when `parallel`.

    At most `max_in_flight` tasks run at once (default: 2 per CPU of the driver's node, so a streamed
    `calls` is never all in the object store at once). `on_result(index, result)` is called as each
    finishes (in completion order), e.g. for progress. Results come back in call order.
    """
    if not parallel:
        results = []
        for index, args in enumerate(calls):
            results.append(fn(*args))
            if on_result is not None:
                on_result(index, results[-1])
        return results
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from lmforge.infra.ray_runtime import ensure_ray

    ensure_ray()
    node_id = ray.get_runtime_context().get_node_id()
    if max_in_flight is None:
        node_cpus = next(
            (node["Resources"].get("CPU", 1) for node in ray.nodes() if node["NodeID"] == node_id), 1
        )
        max_in_flight = 2 * max(1, int(node_cpus))
    remote = ray.remote(num_cpus=1, max_retries=0)(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
    )
    pending: dict[Any, int] = {}
    done: dict[int, Any] = {}

    def collect(ref: Any) -> None:
        index = pending.pop(ref)
        done[index] = ray.get(ref)
        if on_result is not None:
            on_result(index, done[index])

    for index, args in enumerate(calls):
        while len(pending) >= max_in_flight:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            collect(ready)
        pending[remote.remote(*args)] = index
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        collect(ready)
    return [done[index] for index in range(len(done))]
