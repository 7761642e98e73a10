"""The run report: report.md, a self-contained report.html and its PNGs from a run record.

The PNGs: loss_curve.png (pre-training), and where the run fine-tuned, data_efficiency.png and
finetune_losses.png (the downstream-task grid, see task_report.py).

With the lineage trees of the run's artifacts, both show the lineage graph: a Mermaid block in the
Markdown (GitHub draws it), an inline SVG in the HTML (no script, works offline).

The run record has the structure of run.json: run_id, config_name, status, started_at, finished_at,
wall_seconds, store, and `stages` mapping a stage name to status, artifact_id, path, metrics, seconds.
Every part is optional: a missing stage or metric renders as "n/a", never as an error.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge.app import task_report
from lmforge.infra.lineage_text import format_mermaid, format_svg

# The fine-tune grid's stages (finetune/<task>/<cell>/<init>) go after pretrain, in grid order.
STAGE_ORDER = (
    "clean",
    "tokenizer",
    "shard",
    "pretrain",
    "eval/sst2_icl",
    "eval/wikitext_perplexity",
    "eval/mlm_accuracy",
)
NA = "n/a"
Block = tuple[str, Any]  # ("text", str) | ("list", [str]) | ("table", (headers, rows)) | ("image", name)
# | ("lineage", (mermaid, svg))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return NA
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:,.0f}"


def stages_in_order(run_record: dict) -> list[tuple[str, dict]]:
    stages = run_record.get("stages") or {}
    after_pretrain = STAGE_ORDER.index("pretrain") + 1
    ordered = [name for name in STAGE_ORDER[:after_pretrain] if name in stages]
    ordered += task_report.grid_stage_names(stages)
    ordered += [name for name in STAGE_ORDER[after_pretrain:] if name in stages]
    return [(name, stages[name] or {}) for name in ordered + sorted(set(stages) - set(ordered))]


def stage_metrics(run_record: dict, name: str) -> dict:
    stage = (run_record.get("stages") or {}).get(name) or {}
    return stage.get("metrics") or {}


def flat_scalars(metrics: dict, prefix: str = "") -> dict[str, Any]:
    """Numbers and strings of `metrics`, nested dicts flattened to dotted keys; lists left out."""
    found: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            found.update(flat_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, int | float | str | bool) or value is None:
            found[f"{prefix}{key}"] = value
    return found


def key_metrics(metrics: dict, limit: int = 6) -> str:
    """A short `name=value` digest of a stage's metrics for the stage table."""
    scalars = {k: v for k, v in flat_scalars(metrics).items() if not k.endswith("seconds") and v is not None}
    shown = [f"{key}={fmt(value)}" for key, value in list(scalars.items())[:limit]]
    return ", ".join(shown) + (", ..." if len(scalars) > limit else "")


def summary_rows(run_record: dict) -> list[tuple[str, str]]:
    """(item, value) pairs for the summary section, one per headline number."""
    rows: list[tuple[str, str]] = []
    clean = stage_metrics(run_record, "clean")
    rows.append(("documents kept / read", f"{fmt(clean.get('num_kept'))} / {fmt(clean.get('num_read'))}"))
    if not clean.get("steps"):  # runs from before per-step counts: one row per reason
        for reason, count in sorted((clean.get("dropped") or {}).items()):
            rows.append((f"dropped: {reason}", fmt(count)))
    rows.append(("tokenizer vocab size", fmt(stage_metrics(run_record, "tokenizer").get("vocab_size"))))
    shard = flat_scalars(stage_metrics(run_record, "shard"))
    counts = {k: v for k, v in shard.items() if "num_sequences" in k or "num_tokens" in k or k == "seq_len"}
    rows += [(f"shards: {key}", fmt(value)) for key, value in counts.items()] or [("shards", NA)]
    pre = stage_metrics(run_record, "pretrain")
    rows.append(
        (
            "pretrain loss initial -> final",
            f"{fmt(pre.get('initial_train_loss'))} -> {fmt(pre.get('final_train_loss'))}",
        )
    )
    rows.append(("pretrain final val loss", fmt(pre.get("final_val_loss"))))
    precision, reason = pre.get("precision"), pre.get("precision_reason")
    rows.append(("pretrain precision", f"{precision} ({reason})" if precision and reason else fmt(precision)))
    rows.append(("pretrain tokens/s", fmt(pre.get("tokens_per_second"))))
    rows += mfu_rows(pre)
    rows += cluster_rows(pre)
    rows += finetune_rows(run_record)
    stages = run_record.get("stages") or {}
    for name in sorted(stages):
        if not name.startswith("eval/"):
            continue
        task = name.removeprefix("eval/")
        metrics = stage_metrics(run_record, name)
        if "shots" in metrics or task.endswith("icl"):
            rows += icl_rows(ICL_LABELS.get(task, f"{task} ICL"), metrics)
        elif "bits_per_byte" in metrics or task.endswith("perplexity") and "pseudo" not in task:
            label = PERPLEXITY_LABELS.get(task, task)
            rows.append((f"{label} perplexity", fmt(metrics.get("perplexity"))))
            rows.append((f"{label} bits per byte", fmt(metrics.get("bits_per_byte"))))
    pseudo = stage_metrics(run_record, "eval/wikitext_pseudo_perplexity")
    if pseudo or "eval/wikitext_pseudo_perplexity" in (run_record.get("stages") or {}):
        rows.append(("WikiText-2 pseudo-perplexity (masked LM)", fmt(pseudo.get("pseudo_perplexity"))))
    mlm = stage_metrics(run_record, "eval/mlm_accuracy")
    if mlm or "eval/mlm_accuracy" in (run_record.get("stages") or {}):
        rows.append(("MLM masked-token accuracy", fmt(mlm.get("accuracy"))))
        rows.append(("MLM masked-token loss", fmt(mlm.get("masked_loss"))))
    return rows


# Summary labels of the preset eval tasks (others are named by their task id).
ICL_LABELS = {"sst2_icl": "SST-2 ICL"}
PERPLEXITY_LABELS = {"wikitext_perplexity": "WikiText-2"}


def icl_rows(label: str, icl: dict) -> list[tuple[str, str]]:
    """Mean ± std over orderings per k, raw and calibrated, and the majority-class baseline."""
    rows = []
    shots = sorted((icl.get("shots") or {}).items(), key=lambda item: int(item[0]))
    random_labels = " (random demonstration labels)" if icl.get("random_labels") else ""
    for prefix, what in (("", "accuracy"), ("calibrated_", "calibrated accuracy")):
        for k, shot in shots:
            if prefix and f"{prefix}mean_accuracy" not in shot:
                continue  # calibration turned off
            mean, std = fmt(shot.get(f"{prefix}mean_accuracy")), fmt(shot.get(f"{prefix}std_accuracy"))
            num_orderings = len(shot.get(f"{prefix}accuracies") or [])
            rows.append(
                (f"{label} {what}{random_labels}, k={k}", f"{mean} ± {std} ({num_orderings} orderings)")
            )
    if icl:
        rows.append((f"{label} majority-class baseline", fmt(icl.get("majority_baseline_accuracy"))))
    return rows


def mfu_rows(pre: dict) -> list[tuple[str, str]]:
    """MFU named for its denominator: a matmul peak measured in the run, and a nominal one if known."""

    def percent(value: Any) -> str:
        return f"{value * 100:.3g}%" if isinstance(value, int | float) else NA

    measured = pre.get("mfu_vs_measured_peak", pre.get("mfu"))
    suspect = " (peak flagged as suspect)" if pre.get("peak_suspect") else ""
    rows = [("pretrain MFU vs measured matmul peak", percent(measured) + suspect)]
    if isinstance(pre.get("mfu_vs_nominal_peak"), int | float):
        rows.append(("pretrain MFU vs nominal peak", percent(pre["mfu_vs_nominal_peak"])))
    return rows


def cluster_rows(pre: dict) -> list[tuple[str, str]]:
    """Where the pre-training workers ran, and how often the worker group restarted from a checkpoint."""
    rows = []
    nodes = pre.get("worker_nodes")
    if nodes:
        rows.append(("pretrain workers", f"{len(nodes)} on {len(set(nodes))} Ray node(s)"))
    restarts = pre.get("restarts")
    if restarts is not None:
        steps = ", ".join(str(item.get("from_step")) for item in restarts)
        rows.append(
            ("pretrain restarts", f"{len(restarts)}" + (f" (resumed from step {steps})" if steps else ""))
        )
    return rows


def finetune_rows(run_record: dict) -> list[tuple[str, str]]:
    """Per task, pretrained vs random init at the largest fine-tune size, mean ± std over seeds."""
    rows = []
    for task, best in task_report.headline(run_record).items():
        inits = best["inits"]
        num_seeds = max((values["num_seeds"] for values in inits.values()), default=0)
        size = best["size"]
        if size == "all" and best["train_size"] is not None:
            size = f"all ({best['train_size']:.0f})"
        label = (
            f"{task} dev {best['primary_metric'] or NA} ({best['strategy']}, n={size}, {_seeds(num_seeds)})"
        )
        values = [
            f"{init} {task_report.format_mean_std(values['mean'], values['std'])}"
            + (f" ({_seeds(values['num_seeds'])})" if values["num_seeds"] != num_seeds else "")
            for init, values in inits.items()
        ]
        rows.append((label, " vs ".join(values)))
    return rows or [("fine-tune dev accuracy", NA)]


def _seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def stage_table(run_record: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["stage", "status", "artifact", "path", "seconds", "key metrics"]
    rows = [
        [
            name,
            str(stage.get("status", NA)),
            str(stage.get("artifact_id") or NA),
            str(stage.get("path") or NA),
            fmt(stage.get("seconds"), 3),
            key_metrics(stage.get("metrics") or {}),
        ]
        for name, stage in stages_in_order(run_record)
    ]
    return headers, rows


def report_tables(run_record: dict) -> tuple[str, list[dict]]:
    """(markdown summary, one row per stage) for Prefect markdown and table artifacts."""
    markdown = "\n".join(
        _markdown_blocks(_header_blocks(run_record) + [("table", _summary_table(run_record))])
    )
    headers, rows = stage_table(run_record)
    return markdown + "\n", [dict(zip(headers, row, strict=True)) for row in rows]


def _summary_table(run_record: dict) -> tuple[list[str], list[list[str]]]:
    return ["item", "value"], [list(row) for row in summary_rows(run_record)]


def _header_blocks(run_record: dict) -> list[Block]:
    fields = ("run_id", "config_name", "status", "started_at", "finished_at", "wall_seconds", "store")
    lines = [f"{field}: {fmt(run_record.get(field), 5)}" for field in fields]
    return [("text", f"# lmforge run {run_record.get('run_id', NA)}"), ("list", lines)]


def sections(
    run_record: dict,
    png_name: str | None,
    lineage: list[dict] | None = None,
    task_pngs: Sequence[str] = (),
) -> list[Block]:
    """The report's blocks; task_pngs: the downstream-task plots' file names, drawn in that section."""
    blocks = _header_blocks(run_record)
    blocks += [("text", "## Summary"), ("table", _summary_table(run_record))]
    if png_name:
        blocks += [("text", "## Loss curves"), ("image", png_name)]
    blocks += curation_blocks(run_record)
    blocks += downstream_blocks(run_record, task_pngs)
    blocks += probe_blocks(run_record)
    blocks += [("text", "## Stages"), ("table", stage_table(run_record))]
    if lineage:
        graph = (format_mermaid(lineage), format_svg(lineage))
        blocks += [("text", "## Lineage"), ("text", LINEAGE_NOTE), ("lineage", graph)]
    return blocks


SNIPPET_CHARS = 160


def curation_blocks(run_record: dict) -> list[Block]:
    """The clean stage per step: documents dropped, by reason, with sample snippets; then the
    decontamination report, PII replacements and the near-duplicate clusters."""
    clean = stage_metrics(run_record, "clean")
    steps = clean.get("steps") or {}
    if not steps:
        return []
    rows = []
    for step, drops in sorted(steps.items(), key=lambda item: -item[1].get("dropped", 0)):
        reasons = ", ".join(
            f"{reason} {fmt(count)}" for reason, count in (drops.get("reasons") or {}).items()
        )
        samples = " / ".join(
            f"{sample.get('doc_id')}: {' '.join(str(sample.get('text', '')).split())[:SNIPPET_CHARS]}"
            for sample in drops.get("samples") or []
        )
        rows.append([step, fmt(drops.get("dropped")), reasons, samples])
    blocks: list[Block] = [
        ("text", "## Corpus curation"),
        ("text", f"{fmt(clean.get('num_kept'))} of {fmt(clean.get('num_read'))} documents kept."),
        ("table", (["step", "dropped", "reasons", "samples (first dropped)"], rows)),
    ]
    decontamination = clean.get("decontamination") or {}
    if decontamination:
        table = [
            [
                name,
                fmt(report.get("num_contaminated_documents")),
                f"{fmt(report.get('num_contaminated_examples'))} / {fmt(report.get('num_examples'))}",
                ", ".join(str(i) for i in report.get("sample_example_ids") or []) or NA,
            ]
            for name, report in decontamination.items()
        ]
        headers = ["eval set", "training documents matched", "examples matched / checked", "example ids"]
        blocks += [("text", "### Decontamination"), ("table", (headers, table))]
    facts = []
    if clean.get("pii_replaced") is not None:
        facts.append("PII replaced: " + ", ".join(f"{k} {fmt(v)}" for k, v in clean["pii_replaced"].items()))
    near = clean.get("near_dedup") or {}
    if near:
        histogram = ", ".join(
            f"{size}: {fmt(n)}" for size, n in (near.get("cluster_size_histogram") or {}).items()
        )
        facts.append(f"near-duplicate clusters by size: {histogram}")
    if clean.get("lines_removed"):
        facts.append(
            "lines removed: " + ", ".join(f"{k} {fmt(v)}" for k, v in clean["lines_removed"].items())
        )
    return blocks + ([("list", facts)] if facts else [])


def downstream_blocks(run_record: dict, png_names: Sequence[str] = ()) -> list[Block]:
    """Per fine-tuned task its grid table (strategy x train size, inits side by side), then the plots."""
    tables = task_report.grid_rows(run_record)
    if not tables:
        return []
    blocks: list[Block] = [("text", "## Downstream tasks")]
    for task, table in tables.items():
        blocks += [
            ("text", f"### {task}"),
            ("text", task_report.task_note(run_record, task)),
            ("table", table),
        ]
    return blocks + [("image", name) for name in png_names]


def probe_blocks(run_record: dict) -> list[Block]:
    """Fill-mask probes (top-k per probe sentence) and generation samples, where the run has them."""
    blocks: list[Block] = []
    probes = stage_metrics(run_record, "eval/fill_mask_probes").get("probes") or []
    if probes:
        rows = [
            [
                probe.get("sentence", NA),
                ", ".join(
                    f"{p['token_str'].strip()} ({p['score']:.3f})" for p in probe.get("predictions", [])
                ),
            ]
            for probe in probes
        ]
        blocks += [
            ("text", "## Fill-mask probes"),
            ("table", (["probe", "top predictions (probability)"], rows)),
        ]
    samples = stage_metrics(run_record, "eval/generation_samples").get("samples") or []
    if samples:
        rows = [[sample["prompt"], sample["output"]] for sample in samples]
        blocks += [("text", "## Samples (seeded top-k)"), ("table", (["prompt", "output"], rows))]
    return blocks


LINEAGE_NOTE = "Raw inputs (rounded) and the run's artifacts; data flows left to right."


def markdown_lines(blocks: Iterable[Block]) -> list[str]:
    """Report blocks as Markdown lines (the lab report renders its own blocks with these too)."""
    return _markdown_blocks(blocks)


def html_page(blocks: Iterable[Block], images: Mapping[str, bytes]) -> str:
    """Report blocks as one self-contained HTML page; images: each image block's PNG by file name."""
    return _html(blocks, images)


def _alt(png_name: str) -> str:
    return Path(png_name).stem.replace("_", " ")


def _markdown_blocks(blocks: Iterable[Block]) -> list[str]:
    out: list[str] = []
    for kind, content in blocks:
        if kind == "text":
            out += [content, ""]
        elif kind == "list":
            out += [f"- {line}" for line in content] + [""]
        elif kind == "image":
            out += [f"![{_alt(content)}]({content})", ""]
        elif kind == "lineage":
            out += ["```mermaid", content[0].rstrip("\n"), "```", ""]
        else:
            headers, rows = content
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out += ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
            out += ["| " + " | ".join(map(cell, row)) + " |" for row in rows] + [""]
    return out


def _html(blocks: Iterable[Block], images: Mapping[str, bytes]) -> str:
    body: list[str] = []
    for kind, content in blocks:
        if kind == "text":
            level = len(content) - len(content.lstrip("#"))
            tag = f"h{level}" if level else "p"
            body.append(f"<{tag}>{html.escape(content.lstrip('# '))}</{tag}>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in content) + "</ul>")
        elif kind == "image" and content in images:
            data = base64.b64encode(images[content]).decode()
            body.append(f'<img alt="{html.escape(_alt(content))}" src="data:image/png;base64,{data}">')
        elif kind == "lineage":
            body.append(f'<div class="lineage">{content[1]}</div>')
        elif kind == "table":
            headers, rows = content
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
            cells = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}"
        "div.lineage{overflow-x:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>lmforge report</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def curve_points(curve: Any) -> list[tuple[float, float]]:
    """[[step, loss], ...] or [{"step":, "loss":}, ...] to (step, loss) pairs; bad entries skipped."""
    points = []
    for entry in curve or []:
        if isinstance(entry, dict):
            entry = (entry.get("step"), entry.get("loss", entry.get("val_loss")))
        if (
            isinstance(entry, list | tuple)
            and len(entry) >= 2
            and all(isinstance(v, int | float) for v in entry[:2])
        ):
            points.append((float(entry[0]), float(entry[1])))
    return points


def is_local(path: str | None) -> bool:
    """A stage's path on this machine (an object store's stage paths are URLs: nothing to read here)."""
    return bool(path) and "://" not in str(path)


def pretrain_curves(run_record: dict) -> dict[str, list]:
    """Pre-training train and val loss curves by label, from metrics or the stage's metrics.jsonl."""
    pre_stage = (run_record.get("stages") or {}).get("pretrain") or {}
    pre = pre_stage.get("metrics") or {}
    train, val = curve_points(pre.get("loss_curve")), curve_points(pre.get("val_curve"))
    if not train and is_local(pre_stage.get("path")):
        train, val = _curves_from_jsonl(Path(pre_stage["path"]) / "metrics.jsonl")
    return {label: points for label, points in (("train loss", train), ("val loss", val)) if points}


def _curves_from_jsonl(path: Path) -> tuple[list, list]:
    train: list[tuple[float, float]] = []
    val: list[tuple[float, float]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            event = json.loads(line) if line.strip() else {}
            step = event.get("step")
            if isinstance(step, int | float):
                for series, keys in ((train, ("train_loss", "loss")), (val, ("val_loss", "eval_loss"))):
                    value = next((event[k] for k in keys if isinstance(event.get(k), int | float)), None)
                    if value is not None:
                        series.append((float(step), float(value)))
    return train, val


def plot_loss_curves(run_record: dict, path: Path) -> None:
    """Pre-training train/val loss vs step (the fine-tune curves are in finetune_losses.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = pretrain_curves(run_record)
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        steps, losses = zip(*points, strict=True)
        axis.plot(steps, losses, label=label, marker="o" if len(points) < 30 else None)
    if not curves:
        axis.text(0.5, 0.5, "no loss curve recorded", ha="center", va="center", transform=axis.transAxes)
    else:
        axis.legend()
    axis.set(title="pre-training", xlabel="step", ylabel="loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(run_record: dict, output_dir: Path, lineage: list[dict] | None = None) -> dict[str, Path]:
    """Write report.md, report.html (PNGs embedded) and the PNGs; returns their paths.

    Paths: markdown, html, png (loss_curve.png), and where the run has fine-tune grid stages,
    data_efficiency and finetune_losses. lineage: the lineage trees (`ArtifactStore.lineage`) of the
    run's artifacts, drawn as one graph.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    png = output_dir / "loss_curve.png"
    plot_loss_curves(run_record, png)
    paths = {"png": png}
    task_plots = {
        "data_efficiency": task_report.plot_data_efficiency,
        "finetune_losses": task_report.plot_finetune_losses,
    }
    for name, plot in task_plots.items():
        if plot(run_record, output_dir / f"{name}.png"):
            paths[name] = output_dir / f"{name}.png"
    task_pngs = [paths[name].name for name in task_plots if name in paths]
    blocks = sections(run_record, png.name, lineage, task_pngs)
    markdown, page = output_dir / "report.md", output_dir / "report.html"
    markdown.write_text("\n".join(_markdown_blocks(blocks)))
    page.write_text(_html(blocks, {path.name: path.read_bytes() for path in paths.values()}))
    return {"markdown": markdown, "html": page, **paths}
