"""Fill-mask probes: the top-k completions a masked LM gives for fixed factual and syntactic sentences.

A qualitative check to read next to the numbers (does a pretrained model put "paris" first for
"The capital of France is [MASK]."?), written to metrics.json and as a Markdown table, fill_mask.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmforge.core.configbase import identity_view
from lmforge.core.errors import ArtifactError
from lmforge.tasks.config import MASK_PLACEHOLDER, FillMaskProbesConfig
from lmforge.tasks.modeling import load_model, load_tokenizer, spare_token_ids, write_metrics

MARKDOWN_FILE = "fill_mask.md"


def fill_mask_predictions(
    pipe: Any, sentences: list[str], top_k: int, spare_ids: list[int] | None = None
) -> list[list[dict[str, Any]]]:
    """Per sentence (each with one mask token), the top_k {token_str, score} pairs, best first.

    `spare_ids` (a padded table's rows past the tokenizer, `spare_token_ids`) never count: the
    pipeline is asked for that many more candidates and they are dropped.
    """
    spare = set(spare_ids or ())
    predictions = []
    for sentence in sentences:
        candidates = [item for item in pipe(sentence, top_k=top_k + len(spare)) if item["token"] not in spare]
        predictions.append(
            [{"token_str": item["token_str"], "score": float(item["score"])} for item in candidates[:top_k]]
        )
    return predictions


def markdown_table(results: list[dict[str, Any]], top_k: int) -> str:
    """One row per probe: the probe, then `token` (score) for each of its top_k predictions."""
    header = "| Probe | " + " | ".join(str(rank) for rank in range(1, top_k + 1)) + " |"
    lines = [header, "|" + " --- |" * (top_k + 1)]
    for result in results:
        cells = [_cell(result["probe"])]
        cells += [f"{_cell(p['token_str'])} ({p['score']:.4f})" for p in result["predictions"]]
        cells += [""] * (top_k + 1 - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    # A pipe would end the cell; newlines would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def run_fill_mask_probes(
    config: FillMaskProbesConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Top-k fill-mask predictions (transformers' fill-mask pipeline, on CPU) for each probe."""
    from transformers import AutoModelForMaskedLM, pipeline

    began = time.perf_counter()
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.mask_token is None:
        raise ArtifactError(f"{model_dir}: the tokenizer defines no mask token")
    # Loaded here rather than by path: load_tokenizer restores special tokens from our meta file.
    model = load_model(AutoModelForMaskedLM, model_dir)
    pipe = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    sentences = [probe.replace(MASK_PLACEHOLDER, tokenizer.mask_token) for probe in config.probes]
    predictions = fill_mask_predictions(pipe, sentences, config.top_k, spare_token_ids(model, tokenizer))
    results = [
        {"probe": probe, "sentence": sentence, "predictions": top}
        for probe, sentence, top in zip(config.probes, sentences, predictions, strict=True)
    ]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKDOWN_FILE).write_text(markdown_table(results, config.top_k))
    metrics = {"probes": results, "config": identity_view(config)}
    return write_metrics(output_dir, metrics, time.perf_counter() - began)
