"""The model card of a release: README.md with the Hub's YAML metadata, then what a reader needs.

Metadata (https://huggingface.co/docs/hub/model-cards): library_name, pipeline_tag, tags, datasets
(hub data sets the run read or whose local copy it read) and model-index with every evaluation
result of the run. Then: the model, its training procedure, the data (sources with their hashes,
cleaning counts per reason, token counts), evaluation tables, the loss curve, and how to verify and
reproduce the release.
"""

from __future__ import annotations

from typing import Any

import yaml

from lmforge.app.report import flat_scalars, fmt, summary_rows
from lmforge.infra.data_paths import is_hf_uri

# What the Hub's model-index calls the kind of task each of our stages measures.
TASK_TYPES = {"finetune": "text-classification", "perplexity": "text-generation"}


def hub_dataset_id(uri: str) -> str | None:
    """`owner/name` of an hf:// URI (`hf://stanfordnlp/sst2@abc?split=train` -> stanfordnlp/sst2)."""
    if not is_hf_uri(uri):
        return None
    name = uri[len("hf://") :].split("?", 1)[0].split("@", 1)[0]
    return name.strip("/") or None


def config_hub_ids(value: Any) -> list[str]:
    """Every hf:// data set named anywhere in a (config) value, in order of appearance."""
    found: list[str] = []
    if isinstance(value, dict):
        for item in value.values():
            found += config_hub_ids(item)
    elif isinstance(value, list):
        for item in value:
            found += config_hub_ids(item)
    elif isinstance(value, str):
        hub_id = hub_dataset_id(value)
        if hub_id:
            found.append(hub_id)
    return found


def model_index(release: dict[str, Any], record: dict[str, Any]) -> list[dict[str, Any]]:
    """model-index results: per fine-tune task, the pre-trained init's mean dev metric over seeds at
    the grid's headline cell (strategy finetune, largest train size); per evaluation stage, its
    headline metrics."""
    from lmforge.app.task_report import headline

    results = []
    # The run's own stages (an older run's ancestor of a reused artifact may share a stage name).
    configs = {artifact["id"]: artifact["config"] for artifact in release["artifacts"]}
    stage_configs = {stage: configs.get(artifact_id) for stage, artifact_id in release["stages"].items()}
    for task, cell in sorted(headline(record).items()):
        pretrained = (cell.get("inits") or {}).get("pretrained") or {}
        value = pretrained.get("mean")
        if not isinstance(value, int | float):
            continue
        metric = str(cell.get("primary_metric") or "accuracy")
        stage = next((name for name in stage_configs if name.startswith(f"finetune/{task}/")), None)
        hub_ids = config_hub_ids(stage_configs.get(stage)) if stage else []
        stage_metrics = ((record["stages"].get(stage) or {}).get("metrics") or {}) if stage else {}
        task_type = FINETUNE_PIPELINE_TAGS.get(str(stage_metrics.get("task_type")), TASK_TYPES["finetune"])
        seeds = pretrained.get("num_seeds")
        results.append(
            {
                "task": {"type": task_type, "name": f"finetune/{task}"},
                "dataset": {"name": task, "type": hub_ids[0] if hub_ids else task},
                "metrics": [
                    {
                        "type": METRIC_TYPES.get(metric, metric),
                        "name": f"dev {metric.replace('_', ' ')} ({cell.get('strategy')}, "
                        f"{cell.get('size')} examples, mean of {seeds} seeds)",
                        "value": round(float(value), 6),
                    }
                ],
            }
        )
    for stage, outcome in sorted(record["stages"].items()):
        metrics = outcome.get("metrics") or {}
        kind, _, task = stage.partition("/")
        if kind != "eval":
            continue
        values = eval_values(metrics)
        task_type = TASK_TYPES["perplexity"] if "perplexity" in metrics else "text-classification"
        numbers = [
            (kind_, name, float(value)) for kind_, name, value in values if isinstance(value, int | float)
        ]
        if not numbers:
            continue
        hub_ids = config_hub_ids(stage_configs.get(stage))
        results.append(
            {
                "task": {"type": task_type, "name": stage},
                "dataset": {"name": task, "type": hub_ids[0] if hub_ids else task},
                "metrics": [
                    {"type": metric_type, "name": name, "value": round(value, 6)}
                    for metric_type, name, value in numbers
                ],
            }
        )
    return [{"name": release["run"]["config_name"], "results": results}]


# Hub task types of our fine-tune task types.
FINETUNE_PIPELINE_TAGS = {
    "classification": "text-classification",
    "sst2": "text-classification",
    "token_classification": "token-classification",
    "extractive_qa": "question-answering",
    "multiple_choice": "multiple-choice",
}
# Hub model-index metric types of our metric names.
METRIC_TYPES = {"exact_match": "exact_match", "macro_f1": "f1", "f1": "f1", "accuracy": "accuracy"}


def eval_values(metrics: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(model-index metric type, name, value) of an evaluation stage's headline metrics."""
    values: list[tuple[str, str, Any]] = []
    for key in ("perplexity", "bits_per_byte", "accuracy", "pseudo_perplexity"):
        if key in metrics:
            values.append((key, key.replace("_", " "), metrics[key]))
    for shot, result in sorted((metrics.get("shots") or {}).items(), key=lambda item: int(item[0])):
        if isinstance(result, dict):
            values.append(("accuracy", f"{shot}-shot accuracy", result.get("mean_accuracy")))
    return values


def metadata(release: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    model = release["model"]
    datasets = [entry for entry in (hub_dataset_id(item["uri"]) for item in release["raw_inputs"]) if entry]
    datasets += config_hub_ids(release["run"]["config"])
    return {
        "library_name": "transformers",
        "pipeline_tag": model["pipeline_tag"],
        "tags": ["lmforge", model["objective"], "safetensors"],
        "datasets": list(dict.fromkeys(datasets)),
        "model-index": model_index(release, record),
    }


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def model_card(release: dict[str, Any], record: dict[str, Any]) -> str:
    """README.md for the bundle's model/ folder."""
    run, model = release["run"], release["model"]
    pretrain = next(item for item in release["artifacts"] if item["id"] == model["artifact_id"])
    own = set(release["stages"].values())
    metrics = pretrain["metrics"]
    config = release["run"]["config"]["pretrain"]
    header = yaml.safe_dump(metadata(release, record), sort_keys=False, allow_unicode=True)
    lines = [
        f"---\n{header}---",
        "",
        f"# {run['config_name']}: {model['objective']} model trained with lmforge",
        "",
    ]
    lines += [
        f"Model class `{model['auto_class']}`, pre-trained from scratch by lmforge run `{run['run_id']}` "
        f"(objective `{model['objective']}`, {fmt(metrics.get('num_parameters'))} parameters). "
        "Everything below was measured in that run; `release.json` beside this folder records every "
        "artifact, input and setting it came from.",
        "",
        "```python",
        "from transformers import AutoTokenizer, " + model["auto_class"] + ", pipeline",
        f'model = {model["auto_class"]}.from_pretrained("model")',
        'tokenizer = AutoTokenizer.from_pretrained("model")',
        f'pipe = pipeline("{model["pipeline_tag"]}", model="model")',
        "```",
        "",
        "## Training procedure",
        "",
    ]
    procedure = [
        ["objective", str(config.get("objective"))],
        ["model size", str((config.get("model") or {}).get("size"))],
        ["steps", fmt(config.get("max_steps"))],
        ["micro-batch size x workers", f"{config.get('micro_batch_size')} x {config.get('num_workers')}"],
        ["learning rate (peak), schedule", f"{config.get('learning_rate')}, {config.get('lr_decay')}"],
        ["precision", f"{metrics.get('precision')} ({metrics.get('precision_reason')})"],
        ["tokens trained", fmt(metrics.get("num_tokens_trained"))],
        [
            "loss initial -> final",
            f"{fmt(metrics.get('initial_train_loss'))} -> {fmt(metrics.get('final_train_loss'))}",
        ],
        ["final validation loss", fmt(metrics.get("final_val_loss"))],
        ["seed", str(pretrain.get("seed"))],
        ["train seconds", fmt(metrics.get("train_seconds"))],
        [
            "hardware",
            f"{release['hardware'].get('cpu_model', 'n/a')}, {release['hardware'].get('cpu_count')} CPUs",
        ],
        [
            "code",
            f"{release['code'].get('git_commit')}{' (dirty; exact tree in code/source.tar.gz)' if release['code'].get('git_dirty') else ''}",
        ],
    ]
    lines += table(["setting", "value"], procedure)
    lines += ["", "![loss curve](loss_curve.png)", "", "## Data", ""]
    inputs = [
        [item["uri"], item["kind"], (item["sha256"] or "pinned revision")[:16], fmt(item["size"])]
        for item in release["raw_inputs"]
    ]
    lines += table(["input", "kind", "sha256 (first 16)", "bytes"], inputs)
    clean = next(
        (item for item in release["artifacts"] if item["id"] in own and item["stage"] == "clean"), None
    )
    if clean:
        counts = clean["metrics"]
        lines += [
            "",
            f"Cleaning kept {fmt(counts.get('num_kept'))} of {fmt(counts.get('num_read'))} documents:",
            "",
        ]
        dropped = [[reason, fmt(count)] for reason, count in sorted((counts.get("dropped") or {}).items())]
        lines += table(["dropped because", "documents"], dropped or [["(nothing dropped)", "0"]])
    shard = next(
        (item for item in release["artifacts"] if item["id"] in own and item["stage"] == "shard"), None
    )
    if shard:
        tokens = {
            k: v
            for k, v in flat_scalars(shard["metrics"]).items()
            if k.endswith(("num_tokens", "num_sequences"))
        }
        lines += ["", *table(["token counts", "value"], [[k, fmt(v)] for k, v in tokens.items()])]
    lines += ["", "## Evaluation", ""]
    lines += table(["item", "value"], [[item, value] for item, value in summary_rows(record)])
    lines += [
        "",
        "## Verify and reproduce",
        "",
        "```bash",
        "lmforge verify-release .. --pubkey SIGNER.pub   # signature and every file's sha256",
        "lmforge reproduce ..                              # rebuild every stage from the raw inputs",
        "```",
        "",
        "Artifacts (oldest first):",
        "",
    ]
    lines += table(
        ["stage", "artifact", "content id (first 16)"],
        [[item["stage"], item["id"], item["content_id"][:16]] for item in release["artifacts"]],
    )
    return "\n".join(lines) + "\n"
