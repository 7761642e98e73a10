"""Pre-training objectives keyed by their YAML name: model family, packing, batch preparation, loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lmforge.core.errors import ConfigError
from lmforge.core.registry import Registry
from lmforge.training.config import MaskingConfig, ModelConfig
from lmforge.training.masking import IGNORE_INDEX, mask_tokens
from lmforge.training.models import build_bert, build_gpt2

Batch = dict[str, torch.Tensor]


class Objective:
    """What differs between objectives; the training loop is shared.

    `packing` tells the shard stage how to pack sequences; `auto_model_class` names the
    `transformers` Auto class that reloads the exported model; `required_special` lists the
    tokenizer special tokens the objective cannot work without.
    """

    name: str
    packing: str
    auto_model_class: str
    required_special: tuple[str, ...] = ()

    @property
    def uses_masking(self) -> bool:
        """Whether `pretrain.masking` shapes this objective's training (it needs a mask token)."""
        return "mask" in self.required_special

    def _build(self, model_config: ModelConfig, vocab_size: int, seq_len: int, special_ids):
        raise NotImplementedError

    def build_model(self, model_config: ModelConfig, vocab_size: int, seq_len: int, special_ids):
        missing = [name for name in self.required_special if name not in special_ids]
        if missing:
            raise ConfigError(
                f"objective {self.name!r} needs special tokens {missing}; the tokenizer defines "
                f"{sorted(special_ids)}"
            )
        return self._build(model_config, vocab_size, seq_len, special_ids)

    def prepare_batch(
        self,
        input_ids: torch.Tensor,
        special_ids: Mapping[str, int],
        vocab_size: int,
        masking: MaskingConfig,
        generator: torch.Generator,
    ) -> Batch:
        """Model inputs and labels for one micro-batch of packed sequences (labels -100 = no target)."""
        raise NotImplementedError

    def _align(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, labels

    def loss_sum(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed fp32 cross-entropy over the batch's targets, and the number of targets."""
        logits = model(input_ids=batch["input_ids"]).logits
        logits, labels = self._align(logits, batch["labels"])
        flat_labels = labels.reshape(-1)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            flat_labels,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss, (flat_labels != IGNORE_INDEX).sum()


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@OBJECTIVES.register("clm")
class CausalLM(Objective):
    """GPT-2, next-token prediction over EOS-joined packed windows."""

    name = "clm"
    packing = "clm"
    auto_model_class = "AutoModelForCausalLM"

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_gpt2(model_config, vocab_size, seq_len, special_ids)

    def prepare_batch(self, input_ids, special_ids, vocab_size, masking, generator) -> Batch:
        ids = input_ids.long()
        return {"input_ids": ids, "labels": ids.clone()}

    def _align(self, logits, labels):
        # Position t predicts token t+1.
        return logits[:, :-1], labels[:, 1:]


@OBJECTIVES.register("mlm")
class MaskedLM(Objective):
    """BERT, 80/10/10 masked-token prediction over [CLS] ... [SEP] sequences."""

    name = "mlm"
    packing = "mlm"
    auto_model_class = "AutoModelForMaskedLM"
    required_special = ("mask",)

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_bert(model_config, vocab_size, seq_len, special_ids)

    def prepare_batch(self, input_ids, special_ids, vocab_size, masking, generator) -> Batch:
        masked, labels = mask_tokens(input_ids.long(), special_ids, vocab_size, masking, generator)
        return {"input_ids": masked, "labels": labels}


def get_objective(name: str) -> Objective:
    """The registered objective instance for `name` (ConfigError naming the known ones otherwise)."""
    return OBJECTIVES.get(name)()


def build_model(
    objective: str,
    model_config: ModelConfig,
    vocab_size: int,
    seq_len: int,
    special_ids: Mapping[str, int] | None = None,
):
    """A randomly initialised HF model for `objective` (GPT-2 for clm, BERT for mlm)."""
    return get_objective(objective).build_model(model_config, vocab_size, seq_len, dict(special_ids or {}))
