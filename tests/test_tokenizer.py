"""Tests for molinfluence.tokenizer: MoLFormer's special-token ids, regex splitting, explicit truncation with counts,
unknown-token counting, and save/load round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from molinfluence.molformer import ModelLoadError
from molinfluence.tokenizer import (
    PUBLISHED_VOCAB,
    PUBLISHED_VOCAB_SIZE,
    SMILES_REGEX,
    build_smiles_tokenizer,
    count_unknown,
    encode_smiles,
    load_tokenizer,
    published_vocab_tokenizer,
    read_vocab,
    save_tokenizer,
    split_smiles,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "C[C@@H](Br)Cl", "c1ccc2c(c1)CC%12CC2%12", "O=[N+]([O-])c1ccccc1", "CCN"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_smiles_tokenizer(SMILES)


def test_special_tokens_have_the_published_ids(tokenizer) -> None:
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<bos>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 2)
    assert (tokenizer.mask_token, tokenizer.mask_token_id) == ("<mask>", 3)
    assert tokenizer.cls_token_id == 0 and tokenizer.sep_token_id == 1
    assert tokenizer.unk_token == "<unk>" and tokenizer.unk_token_id == len(tokenizer) - 1
    ids = tokenizer("CCN")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "C", "C", "N", "<eos>"]


def test_regex_splits_bracket_atoms_two_letter_halogens_and_two_digit_ring_closures(tokenizer) -> None:
    assert split_smiles("C[C@@H](Br)Cl") == ["C", "[C@@H]", "(", "Br", ")", "Cl"]
    assert split_smiles("c1ccc2c(c1)CC%12CC2%12") == [
        "c", "1", "c", "c", "c", "2", "c", "(", "c", "1", ")", "C", "C", "%12", "C", "C", "2", "%12",
    ]
    assert split_smiles("O=[N+]([O-])c1ccccc1")[:6] == ["O", "=", "[N+]", "(", "[O-]", ")"]
    assert SMILES_REGEX.startswith(r"(\[[^\]]+]|Br?|Cl?")
    for smi in SMILES:  # the tokenizer's own splitting is the regex's
        ids = tokenizer(smi, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == split_smiles(smi)


def test_vocabulary_is_sorted_and_independent_of_input_order() -> None:
    shuffled = SMILES[:]
    random.Random(0).shuffle(shuffled)
    first, second = build_smiles_tokenizer(SMILES), build_smiles_tokenizer(shuffled * 2)
    assert first.get_vocab() == second.get_vocab()
    by_id = sorted(first.get_vocab().items(), key=lambda item: item[1])
    data_tokens = [token for token, _ in by_id[4:-1]]
    assert data_tokens == sorted(data_tokens)
    assert set(data_tokens) == {t for smi in SMILES for t in split_smiles(smi)}


def test_build_rejects_an_empty_smiles_list() -> None:
    with pytest.raises(ValueError, match="no SMILES"):
        build_smiles_tokenizer([])


def test_encode_pads_right_truncates_explicitly_and_counts(tokenizer) -> None:
    smiles = ["CCCCCCCCCC", "CC", "CCN"]
    batch = encode_smiles(tokenizer, smiles, max_length=6)
    assert batch.lengths == [12, 4, 5]
    assert batch.n_truncated == 1
    assert batch.input_ids.shape == (3, 6)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.long
    assert batch.input_ids[0].tolist() == [0] + [tokenizer.convert_tokens_to_ids("C")] * 4 + [1]
    assert batch.input_ids[1, 4:].tolist() == [2, 2]
    assert batch.attention_mask.sum(dim=1).tolist() == [6, 4, 5]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0]


def test_encode_without_truncation_names_the_offending_molecules(tokenizer) -> None:
    smiles = ["CC", "CCCCCCCCCC", "CCN", "CCCCCCCC"]
    with pytest.raises(ValueError, match=r"2 of 4 molecules .* max_length=6 .*first indices: \[1, 3\]"):
        encode_smiles(tokenizer, smiles, max_length=6, truncation=False)
    assert encode_smiles(tokenizer, smiles, max_length=12, truncation=False).n_truncated == 0


def test_encode_rejects_empty_input_and_too_small_max_length(tokenizer) -> None:
    with pytest.raises(ValueError, match="no SMILES"):
        encode_smiles(tokenizer, [])
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        encode_smiles(tokenizer, ["CC"], max_length=2)


def test_unknown_tokens_are_counted(tokenizer) -> None:
    assert count_unknown(tokenizer, SMILES) == 0
    assert count_unknown(tokenizer, []) == 0
    # [Na+] and I are not in the vocabulary; "X" is not SMILES and is not matched by the regex at all.
    assert count_unknown(tokenizer, ["CC[Na+]", "ICCI", "CCX"]) == 4
    ids = tokenizer("ICC", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.unk_token_id


def test_save_and_load_round_trip(tokenizer, tmp_path) -> None:
    save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    smiles = SMILES + ["CC[Na+]"]
    original, reloaded = encode_smiles(tokenizer, smiles), encode_smiles(loaded, smiles)
    assert original.input_ids.equal(reloaded.input_ids)
    assert original.attention_mask.equal(reloaded.attention_mask)
    assert (loaded.pad_token_id, loaded.unk_token_id) == (2, len(loaded) - 1)
    from_file = load_tokenizer(str(tmp_path / "tok" / "tokenizer.json"))
    assert from_file.get_vocab() == tokenizer.get_vocab()


def test_load_reports_missing_directory_missing_file_and_unreachable_hub(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist.*hf download"):
        load_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ModelLoadError, match="hub.*hf download molinfluence-tests/not-a-model"):
        load_tokenizer("molinfluence-tests/not-a-model", local_files_only=True)


def test_load_rejects_a_tokenizer_with_other_special_ids(tmp_path) -> None:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<mask>": 3, "C": 4, "<unk>": 5}
    Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="not a MoLFormer tokenizer"):
        load_tokenizer(str(tmp_path))


def test_load_reads_a_published_style_tokenizer_json(tmp_path) -> None:
    """A tokenizer.json with the published special ids and <unk> = 2361 loads as-is (no remote tokenizer class)."""
    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<mask>": 3}
    vocab.update({f"[Tok{i}]": i for i in range(4, 2361)})
    vocab["<unk>"] = 2361
    source = build_smiles_tokenizer(["C"]).backend_tokenizer
    document = json.loads(source.to_str())
    document["model"]["vocab"] = vocab
    document["added_tokens"] = [
        {**entry, "id": vocab[entry["content"]]} for entry in document["added_tokens"]
    ]
    (tmp_path / "tokenizer.json").write_text(json.dumps(document))
    loaded = load_tokenizer(str(tmp_path))
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id, loaded.mask_token_id) == (0, 1, 2, 3)
    assert loaded.unk_token_id == 2361
    batch = encode_smiles(loaded, ["[Tok7][Tok9]", "C"])
    assert batch.input_ids.tolist() == [[0, 7, 9, 1], [0, 2361, 1, 2]]


@pytest.mark.skipif(not (DATA_DIR / "lipophilicity.csv").is_file(), reason=f"shared data not found in {DATA_DIR}")
def test_lipophilicity_smiles_are_fully_covered_by_the_regex_and_the_default_length() -> None:
    smiles = pd.read_csv(DATA_DIR / "lipophilicity.csv")["SMILES"].tolist()
    assert all("".join(split_smiles(s)) == s for s in smiles)  # no character silently dropped
    tokenizer = build_smiles_tokenizer(smiles)
    assert count_unknown(tokenizer, smiles) == 0
    batch = encode_smiles(tokenizer, smiles)
    assert batch.input_ids.shape == (len(smiles), 202)
    assert batch.n_truncated == sum(n > 202 for n in batch.lengths) == 1


def test_published_vocabulary_gives_molformers_ids_for_real_smiles(molecules) -> None:
    """``source: random`` reads MoLFormer's published vocabulary: 2,362 tokens (the published embedding's rows), and a
    real molecule's ids are the line numbers (from 0) of its regex tokens in bert_vocab.txt, framed by <bos>/<eos>."""
    lines = PUBLISHED_VOCAB.read_text(encoding="utf-8").splitlines()
    assert len(lines) == PUBLISHED_VOCAB_SIZE == 2362
    line_of = {tok: i for i, tok in enumerate(lines)}
    tok = published_vocab_tokenizer()
    assert len(tok) == 2362 and tok.unk_token_id == 2361 == line_of["<unk>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert tok("CCO")["input_ids"] == [0, line_of["C"], line_of["C"], line_of["O"], 1] == [0, 4, 4, 9, 1]
    smiles = molecules["smiles"].tolist()
    checked = 0
    for smi in smiles:
        want = [0] + [line_of.get(t, 2361) for t in split_smiles(smi)] + [1]
        assert tok(smi)["input_ids"] == want, smi
        checked += all(t in line_of for t in split_smiles(smi))
    assert checked == len(smiles) - 3  # FreeSolv's [S+2], [N@@], [N@] (written unusually) are not in it
    assert tok("[Xe+3]C")["input_ids"] == [0, 2361, line_of["C"], 1]  # not in the vocabulary -> <unk>


def test_read_vocab_refuses_a_file_that_is_not_a_molformer_vocabulary(tmp_path) -> None:
    bad = tmp_path / "vocab.txt"
    bad.write_text("<eos>\n<bos>\n<pad>\n<mask>\nC\n<unk>\n")
    with pytest.raises(ValueError, match="special tokens"):
        read_vocab(bad)
    bad.write_text("<bos>\n<eos>\n<pad>\n<mask>\nC\nC\n<unk>\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_vocab(bad)
