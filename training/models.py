"""Hugging Face model builders sized by ModelConfig (random init, so `save_pretrained` output reloads)."""

from __future__ import annotations

from collections.abc import Mapping

from lmforge.core.errors import ConfigError
from lmforge.training.config import ModelConfig


def build_gpt2(model_config: ModelConfig, vocab_size: int, seq_len: int, special_ids: Mapping[str, int]):
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = model_config.resolve()
    eos = special_ids.get("eos")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=seq_len,
        n_embd=shape.hidden_size,
        n_layer=shape.num_layers,
        n_head=shape.num_heads,
        n_inner=shape.intermediate_size,
        resid_pdrop=shape.dropout,
        embd_pdrop=shape.dropout,
        attn_pdrop=shape.dropout,
        bos_token_id=special_ids.get("bos", eos),
        eos_token_id=eos,
        pad_token_id=special_ids.get("pad", eos),
    )
    return GPT2LMHeadModel(config)


def build_bert(
    model_config: ModelConfig,
    vocab_size: int,
    seq_len: int,
    special_ids: Mapping[str, int],
    pretraining_heads: bool = False,
):
    """BertForMaskedLM, or with `pretraining_heads` BertForPreTraining (MLM head + pair classifier)."""
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

    shape = model_config.resolve()
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        hidden_dropout_prob=shape.dropout,
        attention_probs_dropout_prob=shape.dropout,
        max_position_embeddings=seq_len,
        pad_token_id=special_ids.get("pad", 0),
    )
    return BertForPreTraining(config) if pretraining_heads else BertForMaskedLM(config)


def count_parameters(model) -> int:
    """Unique parameters (tied input/output embeddings counted once)."""
    return sum(param.numel() for param in model.parameters())


def build_t5(model_config: ModelConfig, vocab_size: int, seq_len: int, special_ids: Mapping[str, int]):
    """T5 (v1.0 layout: ReLU feed-forward, tied embeddings) with `num_layers` in encoder and decoder.

    Relative position buckets need no maximum length; the decoder starts from the pad token, as
    T5 does.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    shape = model_config.resolve()
    config = T5Config(
        vocab_size=vocab_size,
        d_model=shape.hidden_size,
        d_kv=shape.hidden_size // shape.num_heads,
        d_ff=shape.intermediate_size,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_layers,
        num_heads=shape.num_heads,
        dropout_rate=shape.dropout,
        feed_forward_proj="relu",
        pad_token_id=special_ids["pad"],
        eos_token_id=special_ids["eos"],
    )
    config.decoder_start_token_id = special_ids["pad"]
    return T5ForConditionalGeneration(config)


def use_attention(model, implementation: str) -> None:
    """Switch `model`'s attention kernel ("sdpa" or "eager") in place; the weights are unchanged.

    The kernel is a runtime choice: it is not written into the saved config, so an exported model
    loads with transformers' default. A model class without the kernel gets a ConfigError.
    """
    if model.config._attn_implementation == implementation:
        return
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, ImportError) as error:
        raise ConfigError(
            f"pretrain.attention: {type(model).__name__} cannot use {implementation!r} attention ({error}); "
            "use 'auto' or another kernel"
        ) from error
