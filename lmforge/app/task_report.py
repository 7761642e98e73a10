"""The downstream-task grid of a run: per task, strategies x train sizes x seeds x inits.

Each grid cell is one pipeline stage, `finetune/<task id>/<strategy>-<size>-s<seed index>/<init>`,
whose metrics (run.json) hold the dev scores, the target bookkeeping and the loss curve. The
functions here aggregate over seeds (mean and sample standard deviation) for report.py and the lab
report. Like the rest of the report, a missing stage or metric renders as "n/a", never as an error.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NA = "n/a"
STRATEGIES = ("finetune", "linear_probe")
INITS = ("pretrained", "random")
STAGE_PATTERN = re.compile(
    r"finetune/(?P<task>[^/]+)/(?P<strategy>\w+)-(?P<size>all|\d+)-s(?P<seed>\d+)/(?P<init>\w+)"
)
# Dev keys that are not task scores: sizes and counts, the baselines (drawn as lines), the loss.
NOT_SCORES = (
    "dev_size",
    "dev_majority_baseline_accuracy",
    "dev_chance_accuracy",
    "dev_loss",
    "dev_source",
    "dev_words",
    "dev_windows",
)
INIT_COLOURS = {"pretrained": "tab:blue", "random": "tab:orange"}


@dataclass(frozen=True)
class Cell:
    """One grid cell, parsed from its stage name."""

    task: str
    strategy: str
    size: str  # the requested train size: digits or "all"
    seed_index: int
    init: str

    def order_key(self) -> tuple:
        return (
            self.task,
            _rank(STRATEGIES, self.strategy),
            size_key(self.size),
            self.seed_index,
            _rank(INITS, self.init),
        )


def _rank(known: tuple[str, ...], name: str) -> tuple[int, str]:
    return (known.index(name) if name in known else len(known), name)


def size_key(size: str) -> float:
    """Requested sizes in numeric order, "all" last."""
    return float("inf") if size == "all" else float(size)


def parse_stage_name(name: str) -> Cell | None:
    """The grid cell a stage name denotes; None for every other stage."""
    match = STAGE_PATTERN.fullmatch(name)
    if match is None:
        return None
    return Cell(match["task"], match["strategy"], match["size"], int(match["seed"]), match["init"])


def grid_stage_names(names: Iterable[str]) -> list[str]:
    """The grid stages among `names`, in (task, strategy, size, seed, init) order."""
    cells = {name: cell for name in names if (cell := parse_stage_name(name))}
    return sorted(cells, key=lambda name: cells[name].order_key())


def grid_stages(run_record: dict) -> list[tuple[Cell, dict]]:
    """(cell, stage) for every grid stage of the run, in grid order."""
    stages = run_record.get("stages") or {}
    names = grid_stage_names(stages)
    return [(cell, stages[name] or {}) for name in names if (cell := parse_stage_name(name))]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _values(runs: list[dict], key: str) -> list[float]:
    return [number for metrics in runs if (number := _number(metrics.get(key))) is not None]


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def mean_std(values: list[float]) -> str:
    """Mean ± sample std (ddof=1) of `values`; the std is "n/a" for a single value."""
    if not values:
        return NA
    return format_mean_std(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return NA
    return f"{mean:.3g} ± " + (NA if std is None else f"{std:.2g}")


def _grid(run_record: dict) -> dict[str, dict[tuple[str, str], dict[str, list[dict]]]]:
    """task id -> (strategy, size) -> init -> each seed's metrics, all in grid order."""
    grid: dict[str, dict[tuple[str, str], dict[str, list[dict]]]] = {}
    for cell, stage in grid_stages(run_record):
        row = grid.setdefault(cell.task, {}).setdefault((cell.strategy, cell.size), {})
        row.setdefault(cell.init, []).append(stage.get("metrics") or {})
    return grid


def _row_runs(by_init: dict[str, list[dict]]) -> list[dict]:
    return [metrics for runs in by_init.values() for metrics in runs]


def _task_runs(rows: dict[tuple[str, str], dict[str, list[dict]]]) -> list[dict]:
    return [metrics for by_init in rows.values() for metrics in _row_runs(by_init)]


def _primary(runs: list[dict]) -> str | None:
    return next((str(m["primary_metric"]) for m in runs if m.get("primary_metric")), None)


def _secondary(runs: list[dict], primary: str | None) -> list[str]:
    keys = [
        key
        for metrics in runs
        for key, value in metrics.items()
        if key.startswith("dev_")
        and _number(value) is not None
        and key not in NOT_SCORES
        and key != f"dev_{primary}"
    ]
    return list(dict.fromkeys(keys))


def _inits(by_inits: list[dict[str, list[dict]]]) -> list[str]:
    return sorted({init for by_init in by_inits for init in by_init}, key=lambda name: _rank(INITS, name))


def _size_text(value: float | None) -> str:
    return NA if value is None else f"{value:.1f}".removesuffix(".0")


def target_cell(runs: list[dict], key: str) -> str:
    """Mean `key` (epochs_to_target or target_reached_seconds) over the seeds that reached the target.

    "not reached" when no seed did, "(k of n reached)" when some did, "n/a" without a target.
    """
    with_target = [metrics for metrics in runs if metrics.get("target")]
    if not with_target:
        return NA
    reached = sum(_number(metrics.get("epochs_to_target")) is not None for metrics in with_target)
    if not reached:
        return "not reached"
    values = _values(with_target, key)
    mean = f"{statistics.mean(values):.3g}" if values else NA
    return mean if reached == len(with_target) else f"{mean} ({reached} of {len(with_target)} reached)"


def grid_rows(run_record: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per task id a table (headers, rows), one row per (strategy, requested train size)."""
    tables = {}
    for task, rows in _grid(run_record).items():
        runs = _task_runs(rows)
        primary = _primary(runs)
        secondary, inits = _secondary(runs, primary), _inits(list(rows.values()))
        both = all(init in inits for init in INITS)
        headers = ["strategy", "requested size", "train size (mean)", "seeds"]
        headers += [f"dev {primary or NA}, {init}" for init in inits] + (
            ["pretrained − random"] if both else []
        )
        headers += [f"{key.replace('_', ' ', 1)}, {init}" for key in secondary for init in inits]
        headers += [f"{what} to target, {init}" for what in ("epochs", "seconds") for init in inits]
        table = []
        for (strategy, size), by_init in sorted(rows.items(), key=lambda item: _row_key(*item[0])):
            scores = {init: _values(by_init.get(init, []), f"dev_{primary}") for init in inits}
            counts = [len(scores[init]) for init in inits]
            row = [strategy, size, _size_text(_mean(_values(_row_runs(by_init), "train_size")))]
            row.append(str(counts[0]) if len(set(counts)) == 1 else _per_init(inits, counts))
            row += [mean_std(scores[init]) for init in inits]
            if both:
                row.append(_difference(_mean(scores["pretrained"]), _mean(scores["random"])))
            row += [mean_std(_values(by_init.get(init, []), key)) for key in secondary for init in inits]
            row += [
                target_cell(by_init.get(init, []), key)
                for key in ("epochs_to_target", "target_reached_seconds")
                for init in inits
            ]
            table.append(row)
        tables[task] = (headers, table)
    return tables


def _per_init(inits: list[str], counts: list[int]) -> str:
    return ", ".join(f"{init} {count}" for init, count in zip(inits, counts, strict=True))


def _difference(pretrained: float | None, random: float | None) -> str:
    return NA if pretrained is None or random is None else f"{pretrained - random:+.3g}"


def _row_key(strategy: str, size: str) -> tuple:
    return (_rank(STRATEGIES, strategy), size_key(size))


def task_note(run_record: dict, task_id: str) -> str:
    """One line on a task: its type, primary metric, target and majority-class baseline."""
    runs = _task_runs(_grid(run_record).get(task_id, {}))
    target = next((metrics["target"] for metrics in runs if isinstance(metrics.get("target"), dict)), None)
    baseline = _mean(_values(runs, "dev_majority_baseline_accuracy"))
    task_type = next((str(m["task_type"]) for m in runs if m.get("task_type")), NA)
    target_text = f"dev {target.get('metric', NA)} {target.get('value', NA)}" if target else NA
    baseline_text = NA if baseline is None else f"{baseline:.3g}"
    return (
        f"{task_id} ({task_type}): primary metric dev {_primary(runs) or NA}; target {target_text}; "
        f"majority-class baseline {baseline_text}. Mean ± sample std over seeds."
    )


def headline(run_record: dict, task_id: str | None = None) -> dict:
    """Per task, the largest train size with results of strategy finetune (else the first strategy run).

    Returns {task: {"strategy", "size", "train_size", "primary_metric", "inits": {init: {"mean",
    "std", "num_seeds", "invalid_fraction"}}}}; with `task_id`, that task's entry ({} if absent).
    """
    found = {}
    for task, rows in _grid(run_record).items():
        primary = _primary(_task_runs(rows))

        # The largest size with results of the preferred strategy (finetune, else the first run):
        # a size whose every seed failed must not hide the sizes that have numbers.
        usable = [
            cell
            for cell, by_cell_init in rows.items()
            if any(_values(runs, f"dev_{primary}") for runs in by_cell_init.values())
        ] or list(rows)
        strategy = min({name for name, _ in usable}, key=lambda name: _rank(STRATEGIES, name))
        size = max((s for name, s in usable if name == strategy), key=size_key)
        by_init = rows[(strategy, size)]
        inits = {}
        for init in _inits([by_init]):
            scores = _values(by_init[init], f"dev_{primary}")
            inits[init] = {
                "mean": _mean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else None,
                "num_seeds": len(scores),
                "invalid_fraction": _mean(_values(by_init[init], "dev_invalid_fraction")),
            }
        train_size = _mean(_values(_row_runs(by_init), "train_size"))
        found[task] = {
            "strategy": strategy,
            "size": size,
            "train_size": train_size,
            "primary_metric": primary,
            "inits": inits,
        }
    return found if task_id is None else found.get(task_id, {})


def loss_curve(stage: dict) -> list[tuple[float, float]]:
    """A grid stage's [[step, loss], ...] from its metrics, else from `path`/loss_curve.json."""
    curve = (stage.get("metrics") or {}).get("loss_curve")
    path = str(stage.get("path") or "")
    if curve is None and path and "://" not in path and (Path(path) / "loss_curve.json").is_file():
        curve = json.loads((Path(path) / "loss_curve.json").read_text())
    return [
        (float(entry[0]), float(entry[1]))
        for entry in curve or []
        if isinstance(entry, list | tuple)
        and len(entry) >= 2
        and all(_number(value) is not None for value in entry[:2])
    ]


def _figure(num_panels: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, num_panels, figsize=(6 * num_panels, 4.2), squeeze=False)
    return figure, axes[0]


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _line_key(strategy: str, init: str) -> tuple:
    return (_rank(STRATEGIES, strategy), _rank(INITS, init))


def plot_data_efficiency(run_record: dict, path: Path) -> bool:
    """Primary dev metric vs mean actual train size, one panel per task; False (no file) if empty."""
    panels = {}
    for task, rows in _grid(run_record).items():
        primary = _primary(_task_runs(rows))
        lines: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        for (strategy, _size), by_init in sorted(rows.items(), key=lambda item: _row_key(*item[0])):
            for init, runs in by_init.items():
                scores, sizes = _values(runs, f"dev_{primary}"), _values(runs, "train_size")
                if scores and sizes:
                    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
                    lines[(strategy, init)].append((statistics.mean(sizes), statistics.mean(scores), std))
        if lines:
            panels[task] = (
                primary,
                lines,
                _mean(_values(_task_runs(rows), "dev_majority_baseline_accuracy")),
            )
    if not panels:
        return False
    figure, axes = _figure(len(panels))
    for axis, (task, (primary, lines, baseline)) in zip(axes, panels.items(), strict=True):
        for (strategy, init), points in sorted(lines.items(), key=lambda item: _line_key(*item[0])):
            points.sort()
            xs, ys, errors = zip(*points, strict=True)
            axis.errorbar(
                xs,
                ys,
                yerr=errors,
                marker="o" if strategy == "finetune" else "s",
                capsize=3,
                label=f"{strategy}, {init}",
                color=INIT_COLOURS.get(init),
                linestyle="-" if strategy == "finetune" else ":",
            )
        if baseline is not None:
            axis.axhline(baseline, color="grey", linestyle="--", label="majority class")
        sizes = [x for points in lines.values() for x, _, _ in points]
        if min(sizes) > 0 and max(sizes) >= 10 * min(sizes):
            axis.set_xscale("log")
        axis.set(title=task, xlabel="train examples (mean over seeds)", ylabel=f"dev {primary or NA}")
        axis.legend()
    _save(figure, path)
    return True


def plot_finetune_losses(run_record: dict, path: Path) -> bool:
    """Per task, both inits' training loss on one axis (largest size, each seed a thin line)."""
    chosen = headline(run_record)
    panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    for cell, stage in grid_stages(run_record):
        best = chosen.get(cell.task, {})
        if (cell.strategy, cell.size) == (best.get("strategy"), best.get("size")) and (
            points := loss_curve(stage)
        ):
            panels.setdefault(cell.task, []).append((cell.init, points))
    if not panels:
        return False
    figure, axes = _figure(len(panels))
    for axis, (task, curves) in zip(axes, panels.items(), strict=True):
        labelled = set()
        for init, points in curves:
            steps, losses = zip(*points, strict=True)
            label = None if init in labelled else f"{init} init"
            axis.plot(steps, losses, linewidth=0.9, alpha=0.7, color=INIT_COLOURS.get(init), label=label)
            labelled.add(init)
        best = chosen[task]
        axis.set(
            title=f"{task}: {best['strategy']}, size {best['size']} (one line per seed)",
            xlabel="step",
            ylabel="training loss",
        )
        axis.legend()
    _save(figure, path)
    return True
