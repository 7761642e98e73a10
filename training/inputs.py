"""Driver-side resolution of pretrain inputs: tokenizer meta, shard manifest, their agreement, precision."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressTarget
from lmforge.training.config import PretrainConfig
from lmforge.training.data import MANIFEST, read_manifest
from lmforge.training.objectives import get_objective, sentinel_count_needed
from lmforge.training.precision import DeviceProber, ResolvedPrecision, probe_device, resolve_precision

log = get_logger(__name__)

SPECIAL_NAMES = ("pad", "eos", "bos", "unk", "cls", "sep", "mask")


@dataclass(frozen=True)
class StoreInputs:
    """The shards and tokenizer as artifacts of an object store: each worker fetches them into its own
    node's cache (the driver's copies are on the driver's disk, which other nodes cannot see)."""

    location: str
    shards_id: str
    tokenizer_id: str

    def fetch(self) -> tuple[str, str]:
        """Local (shards, tokenizer) directories on this node, downloaded and checked as needed."""
        # Imported by name: how files are fetched (sha256-checked) does not shape what training makes,
        # so the store's code stays out of the pre-training recipe's code identity.
        store = importlib.import_module("lmforge.infra.store").open_store(self.location)
        return str(store.local_files(self.shards_id)), str(store.local_files(self.tokenizer_id))


@dataclass(frozen=True)
class LoopInputs:
    """Everything a worker needs, resolved on the driver (plain values, so Ray can ship it)."""

    config: PretrainConfig
    shards_dir: str
    tokenizer_dir: str
    seed: int
    vocab_size: int
    # Tokens the model reads per sequence (the encoder's for span corruption), and the decoder's
    # target tokens per sequence where there is a decoder.
    seq_len: int
    # The precision the workers train in ("auto" resolved for their hardware) and why.
    precision: str
    precision_reason: str
    special_ids: dict[str, int] = field(default_factory=dict)
    target_length: int | None = None
    sentinel_ids: tuple[int, ...] = ()
    # Where rank 0 writes TensorBoard event files while training (None: a temporary folder).
    tensorboard_dir: str | None = None
    # Where rank 0 reports steps done (the run's progress board); None: nowhere.
    progress: ProgressTarget | None = None
    # Set for object stores: workers read shards and tokenizer from here, not from the paths above.
    source: StoreInputs | None = None


def tokenizer_info(tokenizer_dir: Path) -> tuple[int, dict[str, int]]:
    """(vocab size, special token name -> id) from `lmforge_tokenizer.json`, completed by the HF tokenizer.

    The meta file's `special_ids` is preferred; names it lacks fall back to the tokenizer's own
    `<name>_token_id` attributes. The vocabulary covers every id either source knows.
    """
    from transformers import AutoTokenizer

    from lmforge.tokenization.train import META_FILE, optional_tokenizer_meta

    tokenizer_dir = Path(tokenizer_dir)
    meta_path = tokenizer_dir / META_FILE
    meta = optional_tokenizer_meta(tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{tokenizer_dir}: not loadable with AutoTokenizer: {err}") from None
    declared = meta.get("special_ids") or {}
    if not isinstance(declared, dict):
        raise ArtifactError(f"{meta_path}: 'special_ids' must be a mapping of name -> id")
    special_ids = {name: int(value) for name, value in declared.items() if isinstance(value, int)}
    for name in SPECIAL_NAMES:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if name not in special_ids and isinstance(value, int):
            special_ids[name] = value
    vocab_size = max(
        [len(tokenizer), int(meta.get("vocab_size") or 0), *(v + 1 for v in special_ids.values())]
    )
    return vocab_size, special_ids


def _tokenizer_meta(tokenizer_dir: Path) -> dict:
    from lmforge.tokenization.train import optional_tokenizer_meta

    return optional_tokenizer_meta(tokenizer_dir)


def resolve_inputs(
    config: PretrainConfig,
    shards_dir: Path,
    tokenizer_dir: Path,
    seed: int,
    probe: DeviceProber | None = None,
    tensorboard_dir: Path | None = None,
    precision: ResolvedPrecision | None = None,
) -> LoopInputs:
    """Check that shards and tokenizer fit the objective, and resolve the precision, before any worker starts.

    `probe` inspects the workers' device (the launcher runs it as a Ray task with the workers'
    resources); by default this process's CPU is probed. `precision`, when the caller has resolved
    it already (the flow does, to put it in the stage's recipe), skips the probe.
    """
    manifest = read_manifest(Path(shards_dir))
    objective = get_objective(config.objective)
    if manifest["packing"] != objective.packing:
        raise ConfigError(
            f"objective {config.objective!r} needs {objective.packing!r}-packed shards, but "
            f"{Path(shards_dir) / MANIFEST} says packing={manifest['packing']!r}"
        )
    splits = {shard["split"] for shard in manifest["shards"]}
    missing = {"train", "validation"} - splits
    if missing:
        raise ArtifactError(f"{Path(shards_dir) / MANIFEST}: no shards for split(s) {sorted(missing)}")
    input_length = int(manifest.get("input_length", manifest["seq_len"]))
    options = manifest.get("packing_options") or {}
    try:
        expected = objective.packing_options(config, input_length)
    except ConfigError as err:
        raise ConfigError(f"{Path(shards_dir) / MANIFEST}: {err}") from None
    if options != expected:
        raise ConfigError(
            f"{Path(shards_dir) / MANIFEST} was packed with {options}, but objective {config.objective!r} "
            f"with this pretrain config needs {expected}: re-run the shard stage with the same settings"
        )
    vocab_size, special_ids = tokenizer_info(Path(tokenizer_dir))
    sentinel_ids = tuple(int(i) for i in _tokenizer_meta(Path(tokenizer_dir)).get("sentinel_ids") or ())
    needed = sentinel_count_needed(objective, config, int(manifest["seq_len"]))
    if len(sentinel_ids) < needed:
        raise ConfigError(
            f"objective {config.objective!r} replaces each of up to {needed} noise spans per sequence with "
            f"its own sentinel, but tokenizer {tokenizer_dir} has {len(sentinel_ids)} (<extra_id_N> tokens); "
            f"raise tokenizer.sentinels or lower shard.seq_len / pretrain.span.noise_density"
        )
    missing_special = [name for name in objective.required_special if name not in special_ids]
    if missing_special:
        raise ConfigError(
            f"objective {config.objective!r} needs special tokens {missing_special}; "
            f"tokenizer {tokenizer_dir} defines {sorted(special_ids)}"
        )
    resolved = precision or choose_precision(config, probe or (lambda measure: probe_device("cpu", measure)))
    return LoopInputs(
        config=config,
        shards_dir=str(Path(shards_dir).resolve()),
        tokenizer_dir=str(Path(tokenizer_dir).resolve()),
        seed=seed,
        vocab_size=vocab_size,
        seq_len=input_length,
        target_length=options.get("target_length"),
        sentinel_ids=sentinel_ids,
        precision=resolved.precision,
        precision_reason=resolved.reason,
        special_ids=special_ids,
        tensorboard_dir=str(tensorboard_dir) if tensorboard_dir else None,
    )


def choose_precision(config: PretrainConfig, probe: DeviceProber) -> ResolvedPrecision:
    """Probe the workers' device and resolve `config.precision` for it; logs the choice and why."""
    # Timing bf16 against fp32 confirms the CPU flags (auto) or says what an explicit bf16 costs.
    resolved = resolve_precision(config.precision, probe(config.precision in ("bf16", "auto")))
    log.info("training precision %s (%s)", resolved.precision, resolved.reason)
    if resolved.warning:
        log.warning("%s", resolved.warning)
    return resolved
