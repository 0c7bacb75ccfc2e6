"""harness.data: corpora, local tokenizer, token blocks, fixed fingerprinted batches.

Each check compares against an independent truth: the stdlib's own topic dict, a brute-force
re-tokenisation, byte-level losslessness, set arithmetic on split indices.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from harness import data as D
from harness.api import ConfigError, ParameterError


@pytest.fixture(scope="module")
def corpus():
    return D.load_corpus({"name": "pydoc", "max_docs": 30})


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return D.train_tokenizer(corpus.texts, 400, tmp_path_factory.mktemp("tok"))


def test_import_is_light():
    code = "import sys, harness.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_pydoc_matches_stdlib():
    import pydoc_data.topics as T

    c = D.load_corpus({"name": "pydoc"})
    assert list(c.ids) == sorted(k for k, v in T.topics.items() if v.strip())
    assert c.texts[c.ids.index("assert")] == T.topics["assert"]
    assert D.load_texts({"name": "pydoc", "max_docs": 3}) == [T.topics[k] for k in sorted(T.topics)[:3]]


def test_text_files_and_jsonl(tmp_path):
    (tmp_path / "b.txt").write_text("beta text")
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "skip.bin").write_text("not text")
    c = D.load_corpus({"name": "text_files", "paths": [str(tmp_path)]})
    assert c.ids == ("a.txt", "b.txt") and c.texts == ("alpha text", "beta text")
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "body": f"doc {i}"}) for i in (2, 1)) + "\n")
    c = D.load_corpus({"name": "jsonl", "paths": [str(p)], "text_field": "body", "id_field": "id"})
    assert c.ids == ("1", "2") and c.texts == ("doc 1", "doc 2")
    # content changes the dataset id (and so every fingerprint)
    p.write_text(json.dumps({"id": 1, "body": "changed"}) + "\n")
    c2 = D.load_corpus({"name": "jsonl", "paths": [str(p)], "text_field": "body", "id_field": "id"})
    assert c2.dataset_id != c.dataset_id


def test_bad_data_configs(tmp_path):
    with pytest.raises(ParameterError, match="data.name"):
        D.load_corpus({"name": "nope"})
    with pytest.raises(ParameterError, match="data.paths"):
        D.load_corpus({"name": "text_files"})
    with pytest.raises(ConfigError, match="matches no file"):
        D.load_corpus({"name": "text_files", "paths": [str(tmp_path / "missing.txt")]})
    p = tmp_path / "x.jsonl"
    p.write_text('{"other": 1}\n')
    with pytest.raises(ConfigError, match="no field 'text'"):
        D.load_corpus({"name": "jsonl", "paths": [str(p)]})
    p.write_text("{broken\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        D.load_corpus({"name": "jsonl", "paths": [str(p)]})
    with pytest.raises(ParameterError, match="data.max_docs"):
        D.load_corpus({"name": "pydoc", "max_docs": 0})
    with pytest.raises(ParameterError, match="data.seq_len"):
        D.batch_settings({"seq_len": 1})


def test_resolve_default():
    assert D.resolve_data_config({"name": "default", "seq_len": 32}, {"name": "pydoc"}) == {
        "name": "pydoc", "seq_len": 32}
    assert D.resolve_data_config(None, {"name": "pydoc"}) == {"name": "pydoc"}
    assert D.resolve_data_config({"name": "jsonl", "paths": ["x"]}, {"name": "pydoc"})["name"] == "jsonl"


def test_tokenizer_lossless_and_cached(corpus, tmp_path, monkeypatch):
    tok = D.train_tokenizer(corpus.texts, 400, tmp_path)
    assert len(tok) == 400 and tok.eos_token == D.EOS_TOKEN and tok.pad_token == D.PAD_TOKEN
    for text in ("x = [1, 2]  # ünïcode ✓\n\ttab", corpus.texts[0]):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless
    # BPE compresses: fewer tokens than bytes on in-domain text
    assert len(tok(corpus.texts[0])["input_ids"]) < 0.6 * len(corpus.texts[0].encode())
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer.json").exists()

    import tokenizers

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator", boom)
    again = D.train_tokenizer(corpus.texts, 400, tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    with pytest.raises(AssertionError, match="retrained"):  # other texts -> other key -> trains
        D.train_tokenizer(corpus.texts[:5], 400, tmp_path)


def test_token_blocks_bruteforce(corpus, tok):
    blocks = D.token_blocks(tok, corpus.texts, 32)
    flat: list[int] = []
    for t in corpus.texts:
        flat += tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
    n = len(flat) // 32
    assert blocks.shape == (n, 32) and blocks.dtype == torch.long
    assert blocks.flatten().tolist() == flat[: n * 32]
    with pytest.raises(ConfigError, match="fewer than one block"):
        D.token_blocks(tok, ["hi"], 64)


def test_split_indices():
    val, train = D.split_indices(10, "val", 0.25), D.split_indices(10, "train", 0.25)
    assert val == [7, 8, 9] and train == list(range(7))
    assert D.split_indices(10, "val", 0.1) == [9] and D.split_indices(3, "val", 0.01) == [2]
    with pytest.raises(ParameterError, match="split"):
        D.split_indices(10, "test")
    with pytest.raises(ConfigError):
        D.split_indices(1, "val")


def test_fixed_batches_deterministic_and_fingerprinted(corpus, tok):
    blocks = D.token_blocks(tok, corpus.texts, 32)
    a = D.fixed_batches(blocks, 3, 4, seed=7, split="val", dataset_id=corpus.dataset_id, val_fraction=0.3)
    b = D.fixed_batches(blocks.clone(), 3, 4, seed=7, split="val", dataset_id=corpus.dataset_id, val_fraction=0.3)
    assert a.fingerprint == b.fingerprint and all(torch.equal(x, y) for x, y in zip(a.batches, b.batches))
    ids = [i for batch in a.example_ids for i in batch]
    assert len(ids) == len(set(ids)) == 12  # without replacement
    assert set(ids) <= set(D.split_indices(blocks.shape[0], "val", 0.3))
    for batch, bids in zip(a.batches, a.example_ids):
        assert torch.equal(batch, blocks[bids])
    other = {
        "seed": D.fixed_batches(blocks, 3, 4, seed=8, split="val", dataset_id=corpus.dataset_id, val_fraction=0.3),
        "split": D.fixed_batches(blocks, 3, 4, seed=7, split="train", dataset_id=corpus.dataset_id, val_fraction=0.3),
        "dataset": D.fixed_batches(blocks, 3, 4, seed=7, split="val", dataset_id="other", val_fraction=0.3),
    }
    assert len({a.fingerprint, *(o.fingerprint for o in other.values())}) == 4
    tampered = blocks.clone()
    tampered[a.example_ids[0][0], 0] += 1
    assert D.fixed_batches(tampered, 3, 4, seed=7, split="val", dataset_id=corpus.dataset_id,
                           val_fraction=0.3).fingerprint != a.fingerprint
    # too few blocks: fewer batches, never repeated examples; less than one batch is an error
    small = D.fixed_batches(blocks[:20], 10, 2, seed=0, split="val", val_fraction=0.2)
    assert len(small) == 2
    with pytest.raises(ConfigError, match="fewer than batch_size"):
        D.fixed_batches(blocks[:20], 1, 5, seed=0, split="val", val_fraction=0.2)


def test_hf_dataset_source_offline(tmp_path):
    """The hf_dataset source through `datasets`' json builder on a local file (no network)."""
    p = tmp_path / "rows.jsonl"
    rows = [{"text": f"row number {i}"} for i in range(5)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = D.load_corpus({"name": "hf_dataset", "path": "json", "data_files": str(p), "split": "train", "max_docs": 3})
    assert c.texts == ("row number 0", "row number 1", "row number 2")
    with pytest.raises(ConfigError, match="no column 'body'"):
        D.load_corpus({"name": "hf_dataset", "path": "json", "data_files": str(p), "text_field": "body"})
    with pytest.raises(ConfigError, match="cannot load Hugging Face dataset"):
        D.load_corpus({"name": "hf_dataset", "path": "no-such/dataset-xyz"})
