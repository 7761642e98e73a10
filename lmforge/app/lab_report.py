"""The paradigm lab's report: a comparison table whose every cell was measured in the lab's runs,
the training loss of every branch against training FLOPs on one axis, and each branch's samples.

Inputs are the branches' run records (run.json structure) and the store that holds their
artifacts. A value a branch does not have (ICL for a masked LM) renders as "n/a".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.app.report import NA, Block, fmt, html_page, markdown_lines, stage_metrics
from lmforge.app.task_report import INITS, headline

GIB = 2**30
SST2 = "sst2"  # the fine-tune task id the lab compares branches on


def _pretrain(record: dict) -> dict:
    return stage_metrics(record, "pretrain")


def _objective(record: dict) -> str:
    return str(((record.get("config") or {}).get("pretrain") or {}).get("objective", NA))


def inference_flops(store: Any, record: dict) -> float | None:
    """FLOPs per generated token of the branch's exported model at its training context length
    (KV cache for the decoders, a full re-encode for a masked LM); None when the export is missing."""
    stage = (record.get("stages") or {}).get("pretrain") or {}
    if store is None or not stage.get("artifact_id"):
        return None
    from transformers import AutoConfig, AutoModel

    from lmforge.training.flops import inference_flops_per_token

    hf_dir = store.local_files(stage["artifact_id"]) / "hf"
    config = AutoConfig.from_pretrained(hf_dir)
    architecture = (config.architectures or [""])[0]
    import transformers

    # Shapes only (random weights): FLOPs depend on the shapes alone.
    model_class: Any = getattr(transformers, architecture, None)
    model = model_class(config) if model_class is not None else AutoModel.from_config(config)
    context = _shards_input_length(record)
    return float(inference_flops_per_token(model, context)) if context else None


def _shards_input_length(record: dict) -> int | None:
    """The model's input length (shard.seq_len; the encoder's for span corruption)."""
    shard = ((record.get("config") or {}).get("shard") or {}).get("seq_len")
    return int(shard) if shard else None


def _icl(record: dict) -> str:
    icl = stage_metrics(record, "eval/sst2_icl")
    shots = sorted((icl.get("shots") or {}).items(), key=lambda item: int(item[0]))
    if not shots:
        return NA
    return ", ".join(f"k={k}: {fmt(shot.get('mean_accuracy'), 3)}" for k, shot in shots)


def _sst2_accuracy(record: dict, init: str) -> str:
    """Mean SST-2 dev accuracy over seeds at the largest fine-tune train size."""
    values = (headline(record, SST2).get("inits") or {}).get(init) or {}
    if values.get("mean") is None:
        return NA
    num_seeds = values["num_seeds"]
    return f"{fmt(values['mean'])} (mean of {num_seeds} seed{'' if num_seeds == 1 else 's'})"


def _invalid(record: dict) -> str:
    """Text-to-text fine-tunes only: the share of generations that were neither label word."""
    inits = headline(record, SST2).get("inits") or {}
    values = [(inits.get(init) or {}).get("invalid_fraction") for init in INITS]
    return NA if all(value is None for value in values) else ", ".join(fmt(value, 3) for value in values)


def _perplexity(record: dict) -> str:
    ppl = stage_metrics(record, "eval/wikitext_perplexity").get("perplexity")
    if ppl is not None:
        return f"{fmt(ppl)} (perplexity)"
    pseudo = stage_metrics(record, "eval/wikitext_pseudo_perplexity").get("pseudo_perplexity")
    if pseudo is not None:
        return f"{fmt(pseudo)} (pseudo-perplexity)"
    return NA


def _samples(record: dict) -> list[str]:
    samples = stage_metrics(record, "eval/generation_samples").get("samples") or []
    return [f"{sample['prompt']} -> {sample['output']}" for sample in samples[:3]]


def comparison_rows(branches: dict[str, dict], store: Any) -> tuple[list[str], list[list[str]]]:
    """The lab's table: one column per branch, one row per measured quantity."""
    from lmforge.training import get_objective

    headers = ["", *branches]
    rows: list[list[str]] = []

    def row(label: str, values: list[Any]) -> None:
        cells = [
            value if isinstance(value, str) else fmt(float(value) if isinstance(value, int) else value)
            for value in values
        ]
        rows.append([label, *cells])

    records = list(branches.values())
    pre = [_pretrain(record) for record in records]
    budgets = [metrics.get("budget") or {} for metrics in pre]
    row("objective", [_objective(record) for record in records])
    row("attention", [get_objective(_objective(record)).attention for record in records])
    row("parameters", [metrics.get("num_parameters") for metrics in pre])
    row("optimizer steps (from the FLOP budget)", [budget.get("max_steps") for budget in budgets])
    row("training FLOPs per step (measured)", [budget.get("flops_per_step") for budget in budgets])
    row(
        "training FLOPs per input token",
        [_ratio(budget.get("flops_per_step"), metrics.get("tokens_per_step")) for budget, metrics in zip(budgets, pre, strict=True)],
    )  # fmt: skip
    row("loss-bearing tokens per step", [budget.get("loss_tokens_per_step") for budget in budgets])
    row(
        "training FLOPs per loss-bearing token",
        [_ratio(budget.get("flops_per_step"), budget.get("loss_tokens_per_step")) for budget in budgets],
    )
    row("inference FLOPs per generated token", [inference_flops(store, record) for record in records])
    row(
        "peak host memory per worker (GiB, RSS)",
        [_peak_gib(metrics.get("peak_rss_bytes_per_worker")) for metrics in pre],
    )
    row("validation loss (own objective)", [metrics.get("final_val_loss") for metrics in pre])
    row("validation target accuracy (own objective)", [metrics.get("final_val_accuracy") for metrics in pre])
    row("pair-task accuracy (NSP/SOP)", [metrics.get("final_val_pair_accuracy") for metrics in pre])
    for init in INITS:
        row(
            f"SST-2 fine-tune accuracy, {init} init (largest train size)",
            [_sst2_accuracy(record, init) for record in records],
        )
    row(
        "SST-2 text-to-text outputs that are no label word (pretrained, random; mean over seeds)",
        [_invalid(record) for record in records],
    )
    row("SST-2 ICL accuracy by k", [_icl(record) for record in records])
    row("WikiText-2 perplexity / pseudo-perplexity", [_perplexity(record) for record in records])
    row("pre-training tokens/s", [metrics.get("tokens_per_second") for metrics in pre])
    return headers, rows


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not numerator or not denominator:
        return None
    return float(numerator) / float(denominator)


def _peak_gib(values: Any) -> str:
    if not values:
        return NA
    return fmt(max(values) / GIB, 3)


def plot_loss_vs_flops(branches: dict[str, dict], path: Path) -> None:
    """Each branch's training loss against cumulative training FLOPs, one axis (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, record in branches.items():
        metrics = _pretrain(record)
        per_step = (metrics.get("budget") or {}).get("flops_per_step")
        curve = metrics.get("loss_curve") or []
        if not per_step or not curve:
            continue
        axis.plot(
            [step * per_step for step, _ in curve],
            [loss for _, loss in curve],
            label=f"{name} ({_objective(record)})",
        )
    axis.set(xscale="log", xlabel="training FLOPs", ylabel="training loss (each objective's own)",
             title="Loss vs compute")  # fmt: skip
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def lab_blocks(config: Any, branches: dict[str, dict], store: Any, png_name: str) -> list[Block]:
    budget = config.lab.compute_budget_flops if config.lab is not None else None
    blocks: list[Block] = [
        ("text", f"# Paradigm lab: {config.name}"),
        (
            "text",
            f"Every branch pre-trained on the same cleaned corpus with a budget of {fmt(budget)} training "
            "FLOPs (steps derived from each branch's measured FLOPs per step), then fine-tuned and "
            "evaluated; every cell below was measured in this lab's runs.",
        ),
        ("table", comparison_rows(branches, store)),
        ("text", "## Loss vs training FLOPs"),
        ("image", png_name),
        ("text", "## Samples (seeded top-k)"),
    ]
    for name, record in branches.items():
        samples = _samples(record)
        blocks.append(("text", f"### {name} ({_objective(record)})"))
        blocks.append(("list", samples or [NA]))
    blocks.append(("text", "## Branch runs"))
    blocks.append(
        (
            "list",
            [
                f"{name}: run {record.get('run_id')} ({record.get('status')})"
                for name, record in branches.items()
            ],
        )
    )
    return blocks


def write_lab_report(config: Any, branches: dict[str, dict], store: Any, output_dir: Path) -> dict[str, Path]:
    """report.md, report.html (PNG inlined) and loss_vs_flops.png into `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    png = output_dir / "loss_vs_flops.png"
    plot_loss_vs_flops(branches, png)
    blocks = lab_blocks(config, branches, store, png.name)
    markdown, page = output_dir / "report.md", output_dir / "report.html"
    markdown.write_text("\n".join(markdown_lines(blocks)))
    page.write_text(html_page(blocks, {png.name: png.read_bytes()}))
    return {"markdown": markdown, "html": page, "png": png}
