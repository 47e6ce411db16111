import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from lrnn_lightning.data import IGNORE, BPTTWindows, LMDataModule, TextDirCorpus, Vocabulary
from lrnn_lightning.data.cache import cached_token_ids
from lrnn_lightning.data.cache import count_tokens
from lrnn_lightning.data.vocab import EOS, UNK
from lrnn_lightning.errors import CorpusError


def write_corpus(folder, train, valid, test):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        (folder / name).write_text(text)
    return folder


# ---- vocabulary ----------------------------------------------------------------------------------
def test_vocabulary_counts_order_and_specials(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a b a c\n\nb a\n")
    counts, total = count_tokens([f])
    assert total == 9
    assert counts == Counter({"a": 3, "b": 2, "c": 1, EOS: 3})  # one <eos> per line, blank included
    v = Vocabulary.from_counts(counts)
    assert v.words == [EOS, "a", "b", "c", UNK]  # by count, ties by word; <unk> always present
    v2 = Vocabulary.from_counts(counts, min_count=2)
    assert "c" not in v2 and v2.encode(["c", "a"]) == [v2.unk_id, v2.index["a"]]
    v3 = Vocabulary.from_counts(counts, max_size=3)
    assert len(v3) == 3 and set(v3.words) == {"a", EOS, UNK}


def test_vocabulary_keeps_unk_present_in_text(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("<unk> x <unk>\n")
    v = Vocabulary.from_counts(count_tokens([f])[0])
    assert v.words == [UNK, EOS, "x"]


# ---- token cache ---------------------------------------------------------------------------------
def test_token_ids_match_text_and_are_memory_mapped(tmp_path):
    root = write_corpus(tmp_path / "c", "a b\nb c a\n", "a z\n", "c\n")
    files = {s: root / f"{s}.txt" for s in ("train", "valid", "test")}
    vocab, ids, meta = cached_token_ids(files, tmp_path / "cache")
    assert isinstance(ids["train"], np.memmap) and ids["train"].dtype == np.int32
    assert vocab.decode(ids["train"].tolist()) == ["a", "b", EOS, "b", "c", "a", EOS]
    assert vocab.decode(ids["valid"].tolist()) == ["a", UNK, EOS]
    assert meta["sizes"] == {"train": 7, "valid": 3, "test": 2}


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path):
    root = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    files = {s: root / f"{s}.txt" for s in ("train", "valid", "test")}
    _, _, m1 = cached_token_ids(files, tmp_path / "cache")
    entries = list((tmp_path / "cache" / "tokens").iterdir())
    _, _, m2 = cached_token_ids(files, tmp_path / "cache")
    assert list((tmp_path / "cache" / "tokens").iterdir()) == entries and m1 == m2
    (root / "valid.txt").write_text("a b a\n")
    vocab, ids, _ = cached_token_ids(files, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2
    assert vocab.decode(ids["valid"].tolist()) == ["a", "b", "a", EOS]


def test_crash_while_building_leaves_no_cache_that_loads(tmp_path, monkeypatch):
    import lrnn_lightning.data.cache as cache

    root = write_corpus(tmp_path / "c", "a b\n", "a\n", "b\n")
    files = {s: root / f"{s}.txt" for s in ("train", "valid", "test")}
    real = cache.encode

    def crash_on_test(paths, vocab, out, num_tokens=None):
        if "test" in str(paths):
            raise KeyboardInterrupt("killed")
        return real(paths, vocab, out, num_tokens)

    monkeypatch.setattr(cache, "encode", crash_on_test)
    with pytest.raises(KeyboardInterrupt):
        cached_token_ids(files, tmp_path / "cache")
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []  # nothing half-built remains
    monkeypatch.setattr(cache, "encode", real)
    vocab, ids, _ = cached_token_ids(files, tmp_path / "cache")
    assert vocab.decode(ids["test"].tolist()) == ["b", EOS]


def test_fixed_vocabulary_file(tmp_path):
    root = write_corpus(tmp_path / "c", "a b\n", "a q\n", "b\n")
    (root / "vocab.txt").write_text("b 10\na 5\nq 1\n")
    files = {s: root / f"{s}.txt" for s in ("train", "valid", "test")}
    vocab, ids, _ = cached_token_ids(files, tmp_path / "cache", vocab_file=root / "vocab.txt")
    assert vocab.words == ["b", "a", "q", UNK, EOS]
    assert vocab.decode(ids["valid"].tolist()) == ["a", "q", EOS]


# ---- corpus errors -------------------------------------------------------------------------------
def test_missing_folder_names_folder_files_and_fix(tmp_path):
    with pytest.raises(CorpusError) as e:
        TextDirCorpus(str(tmp_path / "nope")).prepare(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "train.txt, valid.txt, test.txt" in msg and "data.root" in msg


def test_missing_file_and_empty_training_file(tmp_path):
    root = write_corpus(tmp_path / "c", "a\n", "a\n", "a\n")
    (root / "test.txt").unlink()
    with pytest.raises(CorpusError, match="found train.txt, valid.txt but not test.txt"):
        TextDirCorpus(str(root)).prepare(tmp_path)
    write_corpus(root, "\n\n", "a\n", "a\n")
    with pytest.raises(CorpusError, match="train file .* is empty"):
        TextDirCorpus(str(root)).prepare(tmp_path)


# a Latin-1 file: "café" is fine in UTF-8 up to the é, written as the single byte 0xe9
LATIN1 = "good words\nmore good words\nun café noir\n"
BAD_OFFSET = LATIN1.index("é")  # every character before it is ASCII: one byte each


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_file_that_is_not_utf8_names_the_file_and_the_byte_offset(tmp_path, split):
    root = write_corpus(tmp_path / "c", "a b\n" * 3, "a\n", "b\n")
    (root / f"{split}.txt").write_bytes(LATIN1.encode("latin-1"))
    dm = LMDataModule(TextDirCorpus(str(root)), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CorpusError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert f"{root / f'{split}.txt'} is not UTF-8 text at byte offset {BAD_OFFSET} (line 3: byte 0xe9)" in msg
    assert "iconv" in msg
    assert not list((tmp_path / "cache").glob("tokens/*/meta.json"))  # no cache entry that would load


def test_bad_byte_found_after_the_first_token_and_in_a_vocabulary_file(tmp_path):
    # the emptiness check stops at the first token; the bad byte is read by the cache builder
    root = write_corpus(tmp_path / "c", "", "a\n", "b\n")
    (root / "train.txt").write_bytes(b"a b\n" * 1000 + b"caf\xe9\n")
    files = {s: root / f"{s}.txt" for s in ("train", "valid", "test")}
    with pytest.raises(CorpusError, match=re.escape("train.txt is not UTF-8 text at byte offset 4003 (line 1001: byte 0xe9)")):
        cached_token_ids(files, tmp_path / "cache")
    (root / "train.txt").write_text("a b\n")
    (root / "vocab.txt").write_bytes(b"a\nb\n\xff\n")
    with pytest.raises(CorpusError, match=re.escape("vocab.txt is not UTF-8 text at byte offset 4 (line 3: byte 0xff)")):
        cached_token_ids(files, tmp_path / "cache", vocab_file=root / "vocab.txt")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_first_bad_utf8_offset_across_chunk_boundaries(tmp_path, chunk):
    from lrnn_lightning.data.cache import first_bad_utf8

    path = tmp_path / "t.txt"
    good = "ü€𝄞\nx".encode()  # 2-, 3- and 4-byte characters, then a newline
    path.write_bytes(good + b"\xe2\x82" + b"z")  # a 3-byte sequence cut short
    assert first_bad_utf8(path, chunk) == (len(good), 2, 0xE2)
    path.write_bytes(good + b"\xe2\x82")  # cut short by the end of the file
    assert first_bad_utf8(path, chunk) == (len(good), 2, 0xE2)
    path.write_bytes(good)
    assert first_bad_utf8(path, chunk) is None


# ---- BPTT streams --------------------------------------------------------------------------------
def batchify_reference(ids, bsz):
    """pytorch/examples word_language_model: trim, then one contiguous column per batch entry."""
    n = len(ids) // bsz
    return np.asarray(ids[: n * bsz]).reshape(bsz, n).T


def test_training_windows_follow_word_language_model_semantics():
    ids = np.arange(1, 104, dtype=np.int32)  # 103 tokens; eos id 0
    w = BPTTWindows(ids, batch_size=4, bptt=7, eos_id=0)
    stream = np.concatenate([[0], ids])  # <eos> before the first token
    got_x = torch.cat([w[i][0] for i in range(len(w))]).numpy()
    got_y = torch.cat([w[i][1] for i in range(len(w))]).numpy()
    np.testing.assert_array_equal(got_y, batchify_reference(ids, 4))
    np.testing.assert_array_equal(got_x, batchify_reference(stream[:-1], 4))
    assert [w[i][0].shape[0] for i in range(len(w))] == [7, 7, 7, 4]  # last window shorter
    assert (got_y != IGNORE).all()


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,bsz,bptt", [(103, 4, 7), (10, 3, 2), (57, 5, 35), (1000, 7, 9)])
def test_eval_windows_count_every_token_exactly_once(world, n, bsz, bptt):
    ids = np.arange(1, n + 1, dtype=np.int32)
    seen = []
    lengths = set()
    for rank in range(world):
        w = BPTTWindows(ids, bsz, bptt, eos_id=0, rank=rank, world=world, pad=True)
        lengths.add(len(w))
        for i in range(len(w)):
            x, y = w[i]
            m = y != IGNORE
            seen.extend(y[m].tolist())
            # the input before every real target is the token before it (or <eos> at the start)
            np.testing.assert_array_equal(x[m].numpy(), (y[m] - 1).numpy())
    assert sorted(seen) == ids.tolist()
    assert len(lengths) == 1  # every rank runs the same number of windows (no DDP hang)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_training_parts_are_contiguous_disjoint_and_equal(world):
    ids = np.arange(1, 1001, dtype=np.int32)
    parts = []
    for rank in range(world):
        w = BPTTWindows(ids, 4, 10, eos_id=0, rank=rank, world=world)
        y = torch.cat([w[i][1] for i in range(len(w))]).numpy()
        parts.append(y.T.reshape(-1))  # columns in order
        assert len(w) == math.ceil((1000 // world // 4) / 10)
    flat = np.concatenate(parts)
    assert len(set(flat.tolist())) == flat.size  # disjoint
    for p in parts:
        assert (np.diff(p) == 1).all()  # each rank reads one contiguous part


def test_too_short_split_has_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        BPTTWindows(np.arange(3, dtype=np.int32), batch_size=8, bptt=5, eos_id=0)


def test_datamodule_on_text_dir(tmp_path):
    root = write_corpus(tmp_path / "c", "a b c d\n" * 20, "a b\n" * 5, "c d\n" * 5)
    dm = LMDataModule(TextDirCorpus(str(root)), cache_dir=str(tmp_path / "cache"), batch_size=2, eval_batch_size=3, bptt=4)
    dm.setup("fit")
    assert dm.vocab_size == 6  # a b c d <eos> <unk>
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 2) and x.dtype == torch.int64
    assert sum(int((b[1] != IGNORE).sum()) for b in dm.val_dataloader()) == 15


@pytest.mark.parametrize("world", [2, 3, 4])
def test_eval_columns_do_not_depend_on_the_number_of_processes(world):
    """Each rank evaluates whole columns of the single-process layout: the same contexts, the same loss."""
    ids = np.arange(1, 998, dtype=np.int32)
    single = BPTTWindows(ids, 6, 10, eos_id=0, pad=True)
    ref_x = torch.cat([single[i][0] for i in range(len(single))])
    ref_y = torch.cat([single[i][1] for i in range(len(single))])
    xs, ys = [], []
    for rank in range(world):
        w = BPTTWindows(ids, 6, 10, eos_id=0, rank=rank, world=world, pad=True)
        xs.append(torch.cat([w[i][0] for i in range(len(w))]))
        ys.append(torch.cat([w[i][1] for i in range(len(w))]))
    y, x = torch.cat(ys, 1), torch.cat(xs, 1)
    real = (y != IGNORE).any(0)  # drop the all-padding columns of the last rank
    torch.testing.assert_close(y[:, real], ref_y)
    torch.testing.assert_close(x[:, real], ref_x)
