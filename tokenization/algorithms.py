"""Tokenizer algorithms keyed by their YAML name: how to build, train and canonicalise each one.

Every algorithm returns a `tokenizers.Tokenizer` whose serialisation depends only on the corpus and
config: where the upstream trainer is not deterministic (WordPiece ids, Unigram score noise) the
trained model is rebuilt in a canonical form.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from lmforge.registry import Registry

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from tokenizers.trainers import Trainer

    from tokenization.config import TokenizerConfig


class TokenizerAlgorithm:
    """One tokenizer family. Subclasses fill the class attributes and the three hooks."""

    name: ClassVar[str]
    # Role -> token string. The distinct strings, in this order, get ids 0, 1, 2, ...
    special_tokens: ClassVar[dict[str, str]]
    default_lowercase: ClassVar[bool] = False
    min_vocab_size: ClassVar[int] = 32

    @classmethod
    def special_token_list(cls) -> list[str]:
        return list(dict.fromkeys(cls.special_tokens.values()))

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        """An untrained tokenizer with normaliser, pre-tokeniser and decoder set."""
        raise NotImplementedError

    def trainer(self, config: TokenizerConfig) -> Trainer:
        raise NotImplementedError

    def finalize(self, trained: Tokenizer, lowercase: bool) -> Tokenizer:
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
    special_tokens = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>", "pad": "<|pad|>"}
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
    """BERT style WordPiece with [CLS] ... [SEP] added by the post-processor."""

    name = "wordpiece"
    special_tokens = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    default_lowercase = True
    continuing_subword_prefix = "##"

    def new_tokenizer(self, lowercase: bool) -> Tokenizer:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=self.continuing_subword_prefix)
        return tokenizer

    def trainer(self, config: TokenizerConfig) -> Trainer:
        from tokenizers import trainers

        return trainers.WordPieceTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=self.special_token_list(),
            continuing_subword_prefix=self.continuing_subword_prefix,
            show_progress=False,
        )

    def finalize(self, trained: Tokenizer, lowercase: bool) -> Tokenizer:
        from tokenizers import models, processors

        # The trainer yields the same token set every run but shuffles ~8% of the ids (tokenizers
        # issue #1794). Longest-match encoding ignores ids, so reassigning them canonically keeps the
        # encodings and makes tokenizer.json byte-identical: specials first, then by token string.
        specials = self.special_token_list()
        rest = sorted(token for token in trained.get_vocab() if token not in specials)
        vocab = {token: index for index, token in enumerate([*specials, *rest])}
        tokenizer = self.new_tokenizer(lowercase)
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


@TOKENIZER_ALGORITHMS.register("unigram")
class MetaspaceUnigram(TokenizerAlgorithm):
    """SentencePiece style Unigram over Metaspace pieces; <s>/</s> double as cls/sep like RoBERTa."""

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
    # Scores differ by ~1e-14 between runs; rounding well above that noise makes them reproducible.
    score_decimals = 6

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
            special_tokens=self.special_token_list(),
            unk_token="<unk>",
            show_progress=False,
        )

    def finalize(self, trained: Tokenizer, lowercase: bool) -> Tokenizer:
        from tokenizers import models

        # The Python binding does not expose Unigram pieces; its JSON form does.
        pieces = json.loads(trained.to_str())["model"]["vocab"]
        specials = self.special_token_list()
        scores = {piece: round(score, self.score_decimals) for piece, score in pieces if piece not in specials}
        # Ids do not affect Viterbi segmentation; a total order keeps near-equal scores from swapping.
        ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        vocab = [(token, 0.0) for token in specials] + ordered
        tokenizer = self.new_tokenizer(lowercase)
        tokenizer.model = models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False)
        tokenizer.add_special_tokens(specials)
        return tokenizer
