"""Model and tokenizer loading shared by the tasks (HF-format model directories)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError
from lmforge.infra.artifact_files import TELEMETRY_DIR

SPECIAL_NAMES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
# What the pre-training export writes next to the model (objective, auto_model_class, seq_len, ...).
PRETRAIN_META_FILE = "lmforge_pretrain.json"
SEQ2SEQ_AUTO_CLASS = "AutoModelForSeq2SeqLM"


def load_tokenizer(model_dir: Path) -> Any:
    """AutoTokenizer for the model directory; special tokens it lacks are taken from our meta file."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{model_dir}: cannot load a tokenizer ({err})") from None
    from lmforge.tokenization.train import optional_tokenizer_meta

    # transformers does not infer special tokens from tokenizer.json; the meta names their ids.
    special_ids = optional_tokenizer_meta(Path(model_dir)).get("special_ids") or {}
    for name in SPECIAL_NAMES:
        if getattr(tokenizer, f"{name}_token") is None and isinstance(special_ids.get(name), int):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(special_ids[name]))
    return tokenizer


def load_model(auto_class: Any, model_dir: Path, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(model_dir)` in eval mode, with errors naming the directory."""
    try:
        model = auto_class.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{model_dir}: cannot load a {auto_class.__name__} ({err})") from None
    return model.eval()


def spare_token_ids(model: Any, tokenizer: Any) -> list[int] | None:
    """Ids of the model's table past the tokenizer's vocabulary, or None when there are none.

    Tables are padded to a multiple (`pretrain.vocab_multiple_of`; T5's 32,128 rows for 32,100
    tokens), and no text decodes from those ids, so generation suppresses them and top-k leaves
    them out.
    """
    spare = list(range(len(tokenizer), int(model.config.vocab_size)))
    return spare or None


def pretrain_meta(model_dir: Path) -> dict[str, Any]:
    """The export's lmforge_pretrain.json, or {} for a model directory made elsewhere."""
    path = Path(model_dir) / PRETRAIN_META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    return meta if isinstance(meta, dict) else {}


def is_seq2seq(model_dir: Path) -> bool:
    """Whether the model is an encoder-decoder (T5 from the span objective): the export's
    auto_model_class says so; without the export's metadata, the model config does."""
    auto_class = pretrain_meta(model_dir).get("auto_model_class")
    if isinstance(auto_class, str):
        return auto_class == SEQ2SEQ_AUTO_CLASS
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{model_dir}: cannot load a model config ({err})") from None
    return bool(getattr(config, "is_encoder_decoder", False))


def max_positions(model_config: Any) -> int:
    """The longest input the model's position embeddings allow."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ArtifactError(f"model config {type(model_config).__name__} names no maximum sequence length")


def boundary_token_id(tokenizer: Any) -> int | None:
    """The token a causal LM saw at document starts: EOS (the clm packing joins documents with EOS),
    else BOS, else None. Byte-level BPE uses one token for both; a Unigram tokenizer's BOS <s> never
    occurs in clm shards."""
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def write_metrics(
    output_dir: Path, metrics: dict[str, Any], seconds: float, extra_telemetry: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write metrics.json and telemetry/timings.json; return the metrics plus `seconds` for the manifest.

    metrics.json is part of the artifact's content id, so it holds only what the task computes
    deterministically; wall-clock time goes under telemetry/, which the store leaves out of the id.
    """
    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / TELEMETRY_DIR / "timings.json", {"seconds": seconds, **(extra_telemetry or {})})
    return {**metrics, "seconds": seconds}


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
