"""Pre-training objectives keyed by their YAML name: model family, packing, batch preparation, loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.core.errors import ConfigError
from lmforge.core.registry import Registry
from lmforge.training.config import ModelConfig, PretrainConfig
from lmforge.training.masking import IGNORE_INDEX, mask_batch
from lmforge.training.models import build_bert, build_gpt2, build_t5

Batch = dict[str, torch.Tensor]
# What one forward reports, summed over the batch: `loss_sum` and `correct` over `count` targets,
# and for sentence-pair objectives `pair_loss_sum` / `pair_correct` over `pair_count` pairs.
Sums = dict[str, torch.Tensor]


def token_sums(logits: torch.Tensor, labels: torch.Tensor) -> Sums:
    flat_labels = labels.reshape(-1)
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    targets = flat_labels != IGNORE_INDEX
    correct = (flat_logits.argmax(-1) == flat_labels) & targets
    return {"loss_sum": loss, "count": targets.sum(), "correct": correct.sum()}


@dataclass(frozen=True)
class BatchContext:
    """What an objective needs besides the token rows to build one micro-batch."""

    special_ids: Mapping[str, int]
    vocab_size: int
    config: PretrainConfig
    # Draws for this micro-batch: seeded from (seed, epoch, rank, micro-batch), fresh every epoch.
    generator: torch.Generator
    seed: int
    # The rows' indices within their split (static masks are keyed on them) and the split's name.
    sequence_indices: np.ndarray
    split: str = "train"
    sentinel_ids: tuple[int, ...] = ()
    # Token id -> continues the previous token's word (whole-word masking); None when unused.
    continues_word: torch.Tensor | None = None


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
    # What the model attends to, for reports: "causal", "bidirectional" or "encoder-decoder".
    attention: str
    # Whether `pretrain.masking` shapes this objective's training.
    uses_masking = False
    # Whether `pretrain.span` shapes it.
    uses_span = False
    # The loss head: eager, or compiled per instance by `compile_loss`.
    token_sums = staticmethod(token_sums)

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

    def packing_options(self, config: PretrainConfig, seq_len: int) -> dict[str, Any]:
        """Options the shard stage's packer needs beyond `shard.seq_len` (part of its recipe)."""
        return {}

    def prepare_batch(self, input_ids: torch.Tensor, ctx: BatchContext) -> Batch:
        """Model inputs and labels for one micro-batch of stored rows (labels -100 = no target)."""
        raise NotImplementedError

    def _logits(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels), aligned position by position."""
        return model(input_ids=batch["input_ids"]).logits, batch["labels"]

    def forward(self, model, batch: Batch) -> Sums:
        """Summed fp32 cross-entropy over the batch's targets, correct argmax predictions, target count."""
        logits, labels = self._logits(model, batch)
        return self.token_sums(logits, labels)

    def compile_loss(self) -> None:
        """Compile this instance's loss head (fp32 upcast, cross-entropy, argmax) into fused kernels:
        with the model compiled too, it is the largest piece of a CPU step left in eager ops."""
        self.token_sums = torch.compile(token_sums, dynamic=False)

    def training_loss(self, sums: Sums) -> torch.Tensor:
        """The loss a step minimises: mean over targets (plus the pair task's mean, where there is one)."""
        loss = sums["loss_sum"] / sums["count"].clamp(min=1)
        if "pair_loss_sum" in sums:
            loss = loss + sums["pair_loss_sum"] / sums["pair_count"].clamp(min=1)
        return loss

    def export_template(self, tokens: Mapping[str, str]) -> tuple[str, str] | None:
        """(single, pair) TemplateProcessing the exported tokenizer applies, so `tokenizer(text)` wraps
        text as this objective's training did (`tokens`: role -> token string); None: no specials."""
        return None


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@OBJECTIVES.register("clm")
class CausalLM(Objective):
    """GPT-2, next-token prediction over EOS-joined packed windows."""

    name = "clm"
    packing = "clm"
    auto_model_class = "AutoModelForCausalLM"
    attention = "causal"

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_gpt2(model_config, vocab_size, seq_len, special_ids)

    def prepare_batch(self, input_ids, ctx) -> Batch:
        ids = input_ids.long()
        return {"input_ids": ids, "labels": ids.clone()}

    def _logits(self, model, batch):
        # Position t predicts token t+1.
        logits = model(input_ids=batch["input_ids"]).logits
        return logits[:, :-1], batch["labels"][:, 1:]


def _masked(input_ids: torch.Tensor, ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    masking = ctx.config.masking
    return mask_batch(
        input_ids.long(),
        ctx.sequence_indices,
        ctx.special_ids,
        ctx.vocab_size,
        masking,
        dynamic=masking.dynamic,
        generator=ctx.generator,
        seed=ctx.seed,
        whole_word=masking.whole_word,
        continues_word=ctx.continues_word,
        split=ctx.split,  # type: ignore[arg-type]
    )


@OBJECTIVES.register("mlm")
class MaskedLM(Objective):
    """BERT, 80/10/10 masked-token prediction over [CLS] ... [SEP] sequences."""

    name = "mlm"
    packing = "mlm"
    auto_model_class = "AutoModelForMaskedLM"
    required_special: tuple[str, ...] = ("mask",)
    attention = "bidirectional"
    uses_masking = True

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_bert(model_config, vocab_size, seq_len, special_ids)

    def prepare_batch(self, input_ids, ctx) -> Batch:
        masked, labels = _masked(input_ids, ctx)
        return {"input_ids": masked, "labels": labels}

    def export_template(self, tokens: Mapping[str, str]) -> tuple[str, str] | None:
        cls, sep = tokens["cls"], tokens["sep"]
        return f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1"


class SentencePairMLM(MaskedLM):
    """BERT's masked LM plus a sentence-pair task on `[CLS] A [SEP] B [SEP]` with segment ids: the
    pooled [CLS] state classifies the pair (BertForPreTraining's two heads, losses added)."""

    packing = "pair"
    auto_model_class = "AutoModelForPreTraining"
    required_special = ("mask", "cls", "sep", "pad")
    pair_task: str

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_bert(model_config, vocab_size, seq_len, special_ids, pretraining_heads=True)

    def prepare_batch(self, input_ids, ctx) -> Batch:
        from lmforge.training.sentence_pairs import make_pairs

        pad = ctx.special_ids["pad"]
        lengths = (input_ids != pad).sum(dim=1)
        pairs = make_pairs(
            input_ids.long(),
            lengths,
            self.pair_task,  # type: ignore[arg-type]
            ctx.special_ids["cls"],
            ctx.special_ids["sep"],
            pad,
            ctx.generator,
        )
        masked, labels = _masked(pairs["input_ids"], ctx)
        return {
            "input_ids": masked,
            "token_type_ids": pairs["token_type_ids"],
            "attention_mask": pairs["attention_mask"],
            "labels": labels,
            "pair_labels": pairs["pair_labels"],
        }

    def forward(self, model, batch):
        output = model(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        )
        sums = self.token_sums(output.prediction_logits, batch["labels"])
        pair_logits = output.seq_relationship_logits.float()
        pair_labels = batch["pair_labels"]
        sums["pair_loss_sum"] = F.cross_entropy(
            pair_logits, pair_labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        valid = pair_labels != IGNORE_INDEX
        sums["pair_correct"] = ((pair_logits.argmax(-1) == pair_labels) & valid).sum()
        sums["pair_count"] = valid.sum()
        return sums


@OBJECTIVES.register("mlm_nsp")
class MaskedLMNextSentence(SentencePairMLM):
    """BERT: masked LM + next-sentence prediction (B is the real next segment or a random one, 50/50)."""

    name = "mlm_nsp"
    pair_task = "nsp"


@OBJECTIVES.register("mlm_sop")
class MaskedLMSentenceOrder(SentencePairMLM):
    """ALBERT: masked LM + sentence-order prediction (A and B consecutive, swapped half the time)."""

    name = "mlm_sop"
    pair_task = "sop"


@OBJECTIVES.register("span")
class SpanCorruption(Objective):
    """T5: an encoder-decoder restores noise spans, each replaced by one sentinel in its input."""

    name = "span"
    packing = "span"
    auto_model_class = "AutoModelForSeq2SeqLM"
    required_special = ("pad", "eos")
    attention = "encoder-decoder"
    uses_span = True

    def _build(self, model_config, vocab_size, seq_len, special_ids):
        return build_t5(model_config, vocab_size, seq_len, special_ids)

    def packing_options(self, config, seq_len):
        from lmforge.training.span_corruption import raw_length_for

        span = config.span
        try:
            raw_length, target_length = raw_length_for(
                seq_len, span.noise_density, span.mean_noise_span_length
            )
        except ValueError as err:
            raise ConfigError(
                f"shard.seq_len {seq_len} with pretrain.span {span.model_dump()}: {err}"
            ) from None
        return {"raw_length": raw_length, "target_length": target_length}

    def prepare_batch(self, input_ids, ctx) -> Batch:
        from lmforge.training.span_corruption import corrupt_spans

        span = ctx.config.span
        inputs, labels = corrupt_spans(
            input_ids.long(),
            ctx.sentinel_ids,
            ctx.special_ids["eos"],
            span.noise_density,
            span.mean_noise_span_length,
            ctx.generator,
        )
        # The decoder reads the targets shifted right behind the start token (pad), as T5 trains.
        start = torch.full_like(labels[:, :1], ctx.special_ids["pad"])
        return {
            "input_ids": inputs,
            "decoder_input_ids": torch.cat([start, labels[:, :-1]], 1),
            "labels": labels,
        }

    def _logits(self, model, batch):
        output = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"])
        return output.logits, batch["labels"]

    def export_template(self, tokens: Mapping[str, str]) -> tuple[str, str] | None:
        eos = tokens["eos"]  # T5 appends </s> to encoder inputs
        return f"$A {eos}", f"$A {eos} $B:1 {eos}:1"


def word_continuation_table(config: PretrainConfig, tokenizer_dir: Path) -> torch.Tensor | None:
    """Token id -> continues a word, when `config` masks whole words; else None (nothing to load)."""
    if not (get_objective(config.objective).uses_masking and config.masking.whole_word):
        return None
    from lmforge.tokenization.word_boundaries import continuation_table_for

    return torch.from_numpy(continuation_table_for(Path(tokenizer_dir)))


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
    """A randomly initialised HF model for `objective` (GPT-2 for clm, BERT for mlm, T5 for span)."""
    return get_objective(objective).build_model(model_config, vocab_size, seq_len, dict(special_ids or {}))


def sentinel_count_needed(objective: Objective, config: PretrainConfig, raw_length: int) -> int:
    """Sentinels one sequence uses (span corruption: one per noise span); 0 for other objectives."""
    if not objective.uses_span:
        return 0
    from lmforge.training.span_corruption import noise_counts

    return noise_counts(raw_length, config.span.noise_density, config.span.mean_noise_span_length)[1]
