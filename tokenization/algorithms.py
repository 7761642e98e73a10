"""Tokenizer algorithms keyed by their YAML name: how to build, train and canonicalise each one.

Every algorithm returns a `tokenizers.Tokenizer` whose serialisation depends only on the corpus and
config: where an upstream trainer is not deterministic (WordPiece, Unigram scores) the algorithm
trains differently or rebuilds the model in a canonical form (`tokenization.canonical`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from lmforge.core.registry import Registry
from lmforge.tokenization.canonical import (
    canonical_unigram_pieces,
    canonical_wordpiece_vocab,
    wordpiece_tokens_from_marked_bpe,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from tokenizers.trainers import Trainer

    from lmforge.tokenization.config import TokenizerConfig


class TokenizerAlgorithm:
    """One tokenizer family. Subclasses fill the class attributes and the three hooks."""

    name: ClassVar[str]
    # Role -> token string. The distinct strings, in this order, get ids 0, 1, 2, ...
    special_tokens: ClassVar[dict[str, str]]
    default_lowercase: ClassVar[bool] = False
    min_vocab_size: ClassVar[int] = 32
    # How many T5 sentinel tokens `<extra_id_0>`... the algorithm adds when `tokenizer.sentinels` is
    # unset, and whether it supports them at all.
    default_sentinels: ClassVar[int] = 0
    supports_sentinels: ClassVar[bool] = False

    @classmethod
    def special_token_list(cls) -> list[str]:
        return list(dict.fromkeys(cls.special_tokens.values()))

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        """An untrained tokenizer with normaliser, pre-tokeniser and decoder set."""
        raise NotImplementedError

    def training_tokenizer(self, lowercase: bool) -> Tokenizer:
        """The tokenizer the trainer runs on; the final one unless finalize converts it."""
        return self.new_tokenizer(lowercase)

    def trainer(self, config: TokenizerConfig) -> Trainer:
        raise NotImplementedError

    def finalize(self, trained: Tokenizer, config: TokenizerConfig) -> Tokenizer:
        """The trained tokenizer in canonical form, with its post-processor."""
        return trained


TOKENIZER_ALGORITHMS: Registry[type[TokenizerAlgorithm]] = Registry("tokenizer algorithm")


def _lowercase_normalizer(lowercase: bool) -> Any:
    from tokenizers import normalizers

    return normalizers.Lowercase() if lowercase else None


@TOKENIZER_ALGORITHMS.register("bpe")
class ByteLevelBPE(TokenizerAlgorithm):
    """GPT-2 style byte-level BPE: no unknown tokens, one end-of-text token for bos/eos/unk."""

    name = "bpe"
    special_tokens = {
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<|endoftext|>",
        "pad": "<|pad|>",
    }
    # The 256 byte symbols are the initial alphabet; fewer leaves nothing to merge.
    min_vocab_size = 256

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = _lowercase_normalizer(lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        return tokenizer

    def trainer(self, config: TokenizerConfig) -> Trainer:
        from tokenizers import pre_tokenizers, trainers

        return trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=self.special_token_list(),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )


@TOKENIZER_ALGORITHMS.register("wordpiece")
class BertWordPiece(TokenizerAlgorithm):
    """BERT style WordPiece with [CLS] ... [SEP] added by the post-processor.

    Not trained with tokenizers' WordPieceTrainer: that is BPE over `##`-prefixed continuation
    symbols whose ids come from hash-map order, so tied merges, and hence the vocabulary itself,
    differ between runs. The same merges are learned by plain (deterministic) BPE over words marked
    with a leading word-start symbol, then mapped to WordPiece form: a token with the marker begins
    a word, one without continues it (`##`).
    """

    name = "wordpiece"
    special_tokens = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    default_lowercase = True
    continuing_subword_prefix = "##"
    word_start_marker = "\u2581"

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=self.continuing_subword_prefix)
        return tokenizer

    def training_tokenizer(self, lowercase: bool) -> Tokenizer:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        # BERT's words, each with the marker in front: "Hello, world" -> [marker]Hello [marker], [marker]world.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.BertPreTokenizer(),
                pre_tokenizers.Metaspace(replacement=self.word_start_marker, prepend_scheme="always"),
            ]
        )
        return tokenizer

    def trainer(self, config: TokenizerConfig) -> Trainer:
        from tokenizers import trainers

        # vocab_size merges are always enough: the conversion adds the word-start alphabet and is
        # then cut back to vocab_size (see wordpiece_tokens_from_marked_bpe).
        return trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency, show_progress=False
        )

    def finalize(self, trained: Tokenizer, config: TokenizerConfig) -> Tokenizer:
        from tokenizers import models, processors

        specials = self.special_token_list()
        tokens = wordpiece_tokens_from_marked_bpe(
            trained.get_vocab(),
            max_tokens=config.vocab_size - len(specials),
            marker=self.word_start_marker,
            prefix=self.continuing_subword_prefix,
        )
        vocab = canonical_wordpiece_vocab(tokens, specials)
        tokenizer = self.new_tokenizer(config.resolved_lowercase())
        tokenizer.model = models.WordPiece(
            vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=self.continuing_subword_prefix
        )
        tokenizer.add_special_tokens(specials)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return tokenizer


def sentinel_tokens(count: int) -> list[str]:
    """T5's span-corruption sentinels, `<extra_id_0>` ... `<extra_id_{count-1}>`."""
    return [f"<extra_id_{index}>" for index in range(count)]


@TOKENIZER_ALGORITHMS.register("unigram")
class MetaspaceUnigram(TokenizerAlgorithm):
    """SentencePiece style Unigram over Metaspace pieces; <s>/</s> double as cls/sep like RoBERTa.

    With sentinels (T5's `<extra_id_N>`, 100 by default) it is T5's tokenizer: the sentinels are
    special tokens after the named ones, and the post-processor appends </s> to every text, as T5's
    tokenizer does (the shard stage encodes without post-processing and adds EOS itself).
    """

    name = "unigram"
    special_tokens = {
        "pad": "<pad>",
        "unk": "<unk>",
        "bos": "<s>",
        "eos": "</s>",
        "mask": "<mask>",
        "cls": "<s>",
        "sep": "</s>",
    }
    default_sentinels = 100
    supports_sentinels = True

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = _lowercase_normalizer(lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        return tokenizer

    def trainer(self, config: TokenizerConfig) -> Trainer:
        from tokenizers import trainers

        return trainers.UnigramTrainer(
            vocab_size=config.vocab_size,
            special_tokens=self.special_token_list() + sentinel_tokens(config.resolved_sentinels()),
            unk_token="<unk>",
            show_progress=False,
        )

    def finalize(self, trained: Tokenizer, config: TokenizerConfig) -> Tokenizer:
        from tokenizers import models, processors

        # The Python binding does not expose Unigram pieces; its JSON form does.
        sentinels = sentinel_tokens(config.resolved_sentinels())
        specials = self.special_token_list() + sentinels
        vocab = canonical_unigram_pieces(json.loads(trained.to_str())["model"]["vocab"], specials)
        tokenizer = self.new_tokenizer(config.resolved_lowercase())
        tokenizer.model = models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False)
        tokenizer.add_special_tokens(specials)
        if sentinels:
            eos = self.special_tokens["eos"]
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, specials.index(eos))]
            )
        return tokenizer
