"""The root pipeline config: one typed object per run, composed of each package's section."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel
from lmforge.core.errors import ConfigError
from lmforge.corpus import CorpusConfig
from lmforge.infra.data_paths import RevisionResolver, default_data_dir, hub_commit, pin_hub_uri
from lmforge.tasks.config import EvaluationConfig, FinetuneConfig
from lmforge.tokenization import ShardConfig, TokenizerConfig
from lmforge.training import PretrainConfig, get_objective


class RayConfig(StrictModel):
    """Where heavy work runs. No address: an in-process local runtime (or $LMFORGE_RAY_ADDRESS)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)


class PipelineConfig(StrictModel):
    """Everything one pipeline run needs; saved (resolved) inside every artifact it produces."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    seed: int = 0
    data_dir: str | None = None
    store: str | None = None
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    shard: ShardConfig = ShardConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _tokenizer_fits_objective(self) -> PipelineConfig:
        from lmforge.tokenization import PACKINGS, TOKENIZER_ALGORITHMS

        objective = get_objective(self.pretrain.objective)
        needed = dict.fromkeys(
            [*objective.required_special, *PACKINGS.get(objective.packing).required_specials]
        )
        defined = TOKENIZER_ALGORITHMS.get(self.tokenizer.algorithm).special_tokens
        missing = [name for name in needed if name not in defined]
        if missing:
            usable = [
                name
                for name, algorithm in TOKENIZER_ALGORITHMS.items()
                if set(needed) <= set(algorithm.special_tokens)
            ]
            raise ValueError(
                f"pretrain.objective {self.pretrain.objective!r} needs the special tokens {list(needed)}; "
                f"tokenizer.algorithm {self.tokenizer.algorithm!r} lacks {missing} "
                f"(algorithms that have them: {', '.join(usable) or 'none'})"
            )
        return self

    def resolved_data_dir(self) -> Path | None:
        """data_dir from the config (relative to the working directory), else $LMFORGE_DATA_DIR."""
        if self.data_dir:
            path = Path(self.data_dir).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"data_dir: {self.data_dir!r} is not a directory")
            return path
        return default_data_dir()


def check_inputs(config: PipelineConfig) -> None:
    """Fail before any work starts when a configured data path does not exist."""
    from lmforge import corpus, tasks

    data_dir = config.resolved_data_dir()
    corpus.check_inputs(config.corpus, data_dir)
    tasks.check_inputs(config.finetune, config.evaluation, data_dir)


def pin_hub_revisions(config: PipelineConfig, resolver: RevisionResolver = hub_commit) -> PipelineConfig:
    """`config` with every hf:// data set pinned to the hub commit it names now (hf://owner/name@sha),
    so recipes, lineage and readers all refer to the same bytes. No hf:// input: no network."""
    from lmforge.tasks.inputs import task_paths

    sources = [
        source.model_copy(
            update={"path": pin_hub_uri(source.path, f"corpus.sources[{index}].path", resolver)}
        )
        for index, source in enumerate(config.corpus.sources)
    ]

    def pinned_tasks(section: str, tasks: list) -> list:
        return [
            task.model_copy(
                update={
                    field: pin_hub_uri(path, f"{section}.tasks[{index}].{field}", resolver)
                    for field, path in task_paths(task)
                }
            )
            for index, task in enumerate(tasks)
        ]

    return config.model_copy(
        update={
            "corpus": config.corpus.model_copy(update={"sources": sources}),
            "finetune": config.finetune.model_copy(
                update={"tasks": pinned_tasks("finetune", config.finetune.tasks)}
            ),
            "evaluation": config.evaluation.model_copy(
                update={"tasks": pinned_tasks("evaluation", config.evaluation.tasks)}
            ),
        }
    )
