"""Pre-training: model builders, objectives (clm, mlm and its variants, span), DeepSpeed setup, loop, Ray Train launcher, MFU."""

from lmforge.training.budget import StepBudget, plan_budget
from lmforge.training.config import MaskingConfig, ModelConfig, PretrainConfig, SpanCorruptionConfig
from lmforge.training.inputs import StoreInputs
from lmforge.training.launcher import pretrain, worker_precision, workers_use_gpu
from lmforge.training.masking import mask_tokens
from lmforge.training.objectives import OBJECTIVES, build_model, get_objective
from lmforge.training.work_area import TrainingError

__all__ = [
    "StepBudget",
    "StoreInputs",
    "OBJECTIVES",
    "MaskingConfig",
    "ModelConfig",
    "PretrainConfig",
    "SpanCorruptionConfig",
    "TrainingError",
    "build_model",
    "get_objective",
    "mask_tokens",
    "plan_budget",
    "pretrain",
    "worker_precision",
    "workers_use_gpu",
]
