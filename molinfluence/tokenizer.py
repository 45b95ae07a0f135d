"""SMILES tokenizers for MoLFormer: the published one, and an offline one built from a SMILES list.

MoLFormer reads SMILES split into atoms, bonds, ring closures and branches by the standard SMILES regular
expression, framed as ``<bos> ... <eos>``. Special token ids are fixed by the published vocabulary: ``<bos>`` = 0
(also the CLS token whose hidden state the regressor may read), ``<eos>`` = 1, ``<pad>`` = 2 (the model's
``pad_token_id``), ``<mask>`` = 3; ``<unk>`` is the last id (2361 in the published vocabulary).

The published ``tokenizer.json`` loads as a plain ``PreTrainedTokenizerFast`` (no remote code). Its
``model_max_length`` is effectively unlimited while the model was trained on at most 202 tokens, so
:func:`encode_smiles` always truncates to an explicit ``max_length`` and reports how many molecules it cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from tokenizers import Regex, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Split
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from molinfluence.molformer import PUBLISHED_MODEL_ID, ModelLoadError

SMILES_REGEX = (
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|\%[0-9]{2}|[0-9])"
)
"""The standard SMILES tokenisation pattern (bracket atoms, two-letter halogens, bonds, branches, ring closures)."""

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, MASK_TOKEN, UNK_TOKEN = "<bos>", "<eos>", "<pad>", "<mask>", "<unk>"
SPECIAL_TOKEN_IDS = {BOS_TOKEN: 0, EOS_TOKEN: 1, PAD_TOKEN: 2, MASK_TOKEN: 3}
"""Ids every MoLFormer tokenizer must give its special tokens (``<unk>`` is the last id instead)."""

DEFAULT_MAX_LENGTH = 202
"""Longest token sequence (specials included) the published model saw in pre-training."""

_SPECIAL_TOKEN_KWARGS = {
    "bos_token": BOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "pad_token": PAD_TOKEN,
    "mask_token": MASK_TOKEN,
    "unk_token": UNK_TOKEN,
    "cls_token": BOS_TOKEN,
    "sep_token": EOS_TOKEN,
}


@dataclass(frozen=True)
class EncodedBatch:
    """A right-padded batch of tokenised SMILES.

    Attributes:
        input_ids: LongTensor B x T, padded with the ``<pad>`` id.
        attention_mask: LongTensor B x T, 1 for real tokens (specials included), 0 for padding.
        lengths: token count of each molecule before truncation, specials included.
        n_truncated: how many molecules were longer than ``max_length`` and were cut.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    n_truncated: int


def split_smiles(smiles: str) -> list[str]:
    """The regex tokens of one SMILES string (characters the pattern does not match are dropped)."""
    return re.findall(SMILES_REGEX, smiles)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="right", **_SPECIAL_TOKEN_KWARGS)


def _word_level_tokenizer(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    """A MoLFormer-shaped tokenizer over ``vocab`` (token -> id): split with :data:`SMILES_REGEX`, unseen tokens to
    ``<unk>``, every molecule framed as ``<bos> ... <eos>``."""
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = Split(Regex(SMILES_REGEX), behavior="isolated")
    backend.post_processor = TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[(BOS_TOKEN, SPECIAL_TOKEN_IDS[BOS_TOKEN]), (EOS_TOKEN, SPECIAL_TOKEN_IDS[EOS_TOKEN])],
    )
    backend.add_special_tokens([BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, MASK_TOKEN, UNK_TOKEN])
    return _wrap(backend)


def build_smiles_tokenizer(smiles: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a word-level SMILES tokenizer whose vocabulary is the regex tokens of ``smiles``.

    Ids 0-3 are ``<bos>``, ``<eos>``, ``<pad>``, ``<mask>``; the data tokens follow in sorted order (so the same
    SMILES set always gives the same ids) and ``<unk>`` comes last. Encoding splits with :data:`SMILES_REGEX`,
    maps unseen tokens to ``<unk>`` and frames every molecule as ``<bos> ... <eos>``, like the published tokenizer.
    Its ids are unrelated to the published vocabulary and depend on the data; the pipeline's ``source: random``
    uses :func:`published_vocab_tokenizer` instead (benchmarks on other tasks may still use this one).
    """
    tokens: set[str] = set()
    n_smiles = 0
    for smi in smiles:
        tokens.update(split_smiles(smi))
        n_smiles += 1
    if n_smiles == 0:
        raise ValueError("build_smiles_tokenizer: no SMILES given, cannot build a vocabulary")
    data_tokens = sorted(tokens - set(SPECIAL_TOKEN_IDS) - {UNK_TOKEN})
    vocab = dict(SPECIAL_TOKEN_IDS)
    for token in data_tokens:
        vocab[token] = len(vocab)
    vocab[UNK_TOKEN] = len(vocab)
    return _word_level_tokenizer(vocab)


PUBLISHED_VOCAB = Path(__file__).resolve().parent / "vocab" / "bert_vocab.txt"
"""MoLFormer's published vocabulary, one token a line, id = line number - 1 (provenance: ``vocab/README.md``)."""
PUBLISHED_VOCAB_SIZE = 2362
"""Rows of the published model's token embedding (= lines of :data:`PUBLISHED_VOCAB`)."""


def read_vocab(path: str | Path = PUBLISHED_VOCAB) -> dict[str, int]:
    """token -> id from a vocabulary file of one token a line (id = line number - 1), checked to be a MoLFormer one.

    Raises:
        ValueError: duplicate tokens, or special tokens not at ids 0-3 / ``<unk>`` not last.
    """
    tokens = Path(path).read_text(encoding="utf-8").splitlines()
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: {len(tokens) - len(vocab)} duplicate tokens")
    wrong = {t: vocab.get(t) for t, i in SPECIAL_TOKEN_IDS.items() if vocab.get(t) != i}
    if wrong or vocab.get(UNK_TOKEN) != len(tokens) - 1:
        raise ValueError(f"{path}: special tokens must have ids {SPECIAL_TOKEN_IDS} and {UNK_TOKEN} the last id")
    return vocab


def published_vocab_tokenizer(path: str | Path = PUBLISHED_VOCAB) -> PreTrainedTokenizerFast:
    """A tokenizer over MoLFormer's published 2,362-token vocabulary (shipped with the package): the same ids whatever
    the data, so a randomly initialised model built on it does not depend on which molecules a run reads."""
    return _word_level_tokenizer(read_vocab(path))


def _check_special_ids(tokenizer: PreTrainedTokenizerFast, source: str) -> None:
    vocab = tokenizer.get_vocab()
    wrong = {tok: vocab.get(tok) for tok, idx in SPECIAL_TOKEN_IDS.items() if vocab.get(tok) != idx}
    if wrong or UNK_TOKEN not in vocab:
        raise ModelLoadError(
            f"{source} is not a MoLFormer tokenizer: special tokens must have ids {SPECIAL_TOKEN_IDS} and "
            f"{UNK_TOKEN} must exist, found {wrong or {UNK_TOKEN: None}}"
        )


def load_tokenizer(
    name_or_path: str, *, local_files_only: bool = False, revision: str | None = None
) -> PreTrainedTokenizerFast:
    """Load a MoLFormer tokenizer from a directory holding ``tokenizer.json`` (or that file itself) or a hub id.

    Only ``tokenizer.json`` is read (as a ``PreTrainedTokenizerFast``), so the hub repository's custom tokenizer
    class is never imported. The special tokens are set explicitly and their ids checked.

    Raises:
        ModelLoadError: no ``tokenizer.json`` in the directory, the hub is unreachable or the file is not a MoLFormer
            tokenizer.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        source = str(path)
    elif path.is_dir():
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelLoadError(
                f"{str(path)!r} has no tokenizer.json; save one with save_tokenizer() or download the published one "
                f"with `hf download {PUBLISHED_MODEL_ID} --local-dir DIR`"
            )
        source = str(tokenizer_file)
    elif name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1:
        raise ModelLoadError(
            f"tokenizer directory {name_or_path!r} does not exist; download the published tokenizer with "
            f"`hf download {PUBLISHED_MODEL_ID} --local-dir DIR` and set model.name to DIR"
        )
    else:
        try:
            source = hf_hub_download(
                name_or_path, "tokenizer.json", revision=revision, local_files_only=local_files_only
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot fetch tokenizer.json of {name_or_path!r} from the Hugging Face hub "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); download it with "
                f"`hf download {name_or_path} --local-dir DIR` and set model.name to DIR"
            ) from exc
    try:
        backend = Tokenizer.from_file(source)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelLoadError(f"{source!r} is not a valid tokenizers JSON file: {exc}") from exc
    tokenizer = _wrap(backend)
    _check_special_ids(tokenizer, source)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Write ``tokenizer`` (``tokenizer.json`` and its config) into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def encode_smiles(
    tokenizer: PreTrainedTokenizerFast,
    smiles: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    truncation: bool = True,
) -> EncodedBatch:
    """Tokenise ``smiles`` into a right-padded batch of at most ``max_length`` tokens per molecule.

    Truncation keeps ``<bos>``, the first ``max_length - 2`` SMILES tokens and ``<eos>``. With
    ``truncation=False`` a molecule longer than ``max_length`` is an error instead.

    Raises:
        ValueError: empty ``smiles``, ``max_length < 3``, or (without truncation) molecules that are too long.
    """
    smiles = list(smiles)
    if not smiles:
        raise ValueError("encode_smiles: no SMILES given")
    if max_length < 3:
        raise ValueError(f"encode_smiles: max_length must be >= 3 (<bos>, one token, <eos>), got {max_length}")
    full = tokenizer(smiles, add_special_tokens=True, truncation=False, padding=False, verbose=False)
    lengths = [len(ids) for ids in full["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long and not truncation:
        raise ValueError(
            f"encode_smiles: {len(too_long)} of {len(smiles)} molecules have more than max_length={max_length} "
            f"tokens (first indices: {too_long[:10]}); raise max_length or allow truncation"
        )
    batch = tokenizer(
        smiles,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
        return_attention_mask=True,
        verbose=False,
    )
    return EncodedBatch(
        input_ids=batch["input_ids"].long(),
        attention_mask=batch["attention_mask"].long(),
        lengths=lengths,
        n_truncated=len(too_long),
    )


def count_unknown(tokenizer: PreTrainedTokenizerFast, smiles: Iterable[str]) -> int:
    """Number of tokens in ``smiles`` that the tokenizer maps to ``<unk>`` (i.e. chemistry its vocabulary lacks)."""
    smiles = list(smiles)
    if not smiles:
        return 0
    encoded = tokenizer(smiles, add_special_tokens=False, verbose=False)["input_ids"]
    return sum(ids.count(tokenizer.unk_token_id) for ids in encoded)
