"""Train and load small byte-level BPE tokenizers for the synthetic corpora.

The tokenizer follows the Qwen chat conventions that the MSA template relies on:

* special tokens, each a single id, in this order (ids 0..3): ``<|endoftext|>`` (padding),
  ``<|im_start|>``, ``<|im_end|>`` (end of sequence) and ``<|object_ref_end|>``;
* byte-level BPE (every byte string is encodable; decoding is lossless);
* every decimal digit is its own pre-token (``Digits(individual_digits=True)``), so a document id
  such as ``"[4217]"`` is ``[``, ``4``, ``2``, ``1``, ``7``, ``]`` and ids of any size are learnable.

A saved tokenizer is a directory with ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``, loadable by ``transformers.AutoTokenizer.from_pretrained(dir)``.
``transformers`` is imported only when these functions run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

__all__ = ["SPECIAL_TOKENS", "PAD_TOKEN", "EOS_TOKEN", "train_tokenizer", "load_tokenizer", "save_tokenizer_files"]

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_end|>")
"""Special tokens of the official template, each encoded as one id (ids 0..3 after training)."""

TOKENIZER_FILE = "tokenizer.json"


def _wrap(tokenizer_object: object) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, EOS_TOKEN)],
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    path: str | os.PathLike[str] | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (see the module docstring for its layout).

    Args:
        texts: training texts (any iterable; consumed once).
        vocab_size: total vocabulary, including the 256 byte symbols and the special tokens;
            must be at least ``256 + len(SPECIAL_TOKENS)``.
        path: directory to save into (created if missing); ``None`` keeps it in memory only.
        min_frequency: minimum pair count for a merge.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with pad ``<|endoftext|>`` and eos ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size must be >= {floor} (bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    logger.info("trained byte-level BPE tokenizer with %d tokens", tok.get_vocab_size())
    if path is not None:
        save_tokenizer_files(tok, path)
    return _wrap(tok)


def save_tokenizer_files(tokenizer_object: object, path: str | os.PathLike[str]) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``path``.

    The two JSON side files are written here rather than by ``save_pretrained`` so that the same
    directory loads under transformers 4.x and 5.x (``tokenizer_class`` = ``PreTrainedTokenizerFast``).
    """
    os.makedirs(path, exist_ok=True)
    tokenizer_object.save(os.path.join(path, TOKENIZER_FILE))  # type: ignore[attr-defined]
    extra = [t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, EOS_TOKEN)]
    special_map = {"pad_token": PAD_TOKEN, "eos_token": EOS_TOKEN, "additional_special_tokens": extra}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        with open(os.path.join(path, name), "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2)
            handle.write("\n")


def load_tokenizer(path_or_dir: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`train_tokenizer` (a directory or its ``tokenizer.json``)."""
    from transformers import PreTrainedTokenizerFast

    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        return PreTrainedTokenizerFast.from_pretrained(path)
    if os.path.isfile(path):
        return _wrap(_tokenizer_from_file(path))
    raise FileNotFoundError(f"no tokenizer at {path}")


def _tokenizer_from_file(path: str) -> object:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)
