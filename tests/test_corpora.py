"""The corpus registry: every layout loads with hand-counted sizes; downloads are safe."""

import dataclasses
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lrnn_lightning.data.cache as cache
from conftest import SHARED_DATA
from lrnn_lightning.data import CORPORA, LMDataModule, RegistryCorpus, corpus_spec
from lrnn_lightning.errors import CorpusError

TRAIN, VALID, TEST = "a b c\nb c\n", "a z\n", "c\n\n"
# hand counts: train 5 words + 2 <eos>; valid 2 + 1; test 1 + 2 (the blank line has an <eos>)
SIZES = {"train": 7, "valid": 3, "test": 3}
TYPES = 5  # a b c <eos> <unk>
LAYOUTS = [(name, i) for name, spec in CORPORA.items() if name != "one_billion_word" for i in range(len(spec.layouts))]


def write_layout(root: Path, layout: dict, texts=(TRAIN, VALID, TEST)) -> None:
    for split, text in zip(("train", "valid", "test"), texts):
        path = root / layout[split].replace("*", "00001")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load(corpus, tmp_path):
    dm = LMDataModule(corpus, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    return dm


@pytest.mark.parametrize("name,layout", LAYOUTS, ids=[f"{n}-{i}" for n, i in LAYOUTS])
def test_every_layout_of_every_corpus_loads(tmp_path, name, layout):
    spec = corpus_spec(name)
    write_layout(tmp_path / "c", spec.layouts[layout])
    dm = load(RegistryCorpus(name, str(tmp_path / "c")), tmp_path)
    assert dm.sizes == SIZES and dm.vocab_size == TYPES
    assert dm.vocab.decode(np.asarray(dm.ids["valid"]).tolist()) == ["a", "<unk>", "<eos>"]


@pytest.mark.parametrize("layout", [1, 2])
def test_one_billion_word_shards_heldout_and_min_count_3(tmp_path, layout):
    spec = corpus_spec("one_billion_word")
    lay = spec.layouts[layout]
    root = tmp_path / "c"
    shard = lambda i: root / lay["train"].replace("*", f"{i:05d}")  # noqa: E731
    for i, text in ((1, "the cat sat\nthe dog\n"), (2, "the cat ran\n"), (99, "cat the\n")):
        shard(i).parent.mkdir(parents=True, exist_ok=True)
        shard(i).write_text(text)
    for split, text in (("valid", "the bird\n"), ("test", "cat\n")):
        (root / lay[split]).parent.mkdir(parents=True, exist_ok=True)
        (root / lay[split]).write_text(text)
    dm = load(RegistryCorpus("one_billion_word", str(root)), tmp_path)
    # counts: the 4, cat 3, <eos> 4, sat/dog/ran 1 -> below 3 -> <unk>
    assert dm.vocab.words == ["<eos>", "the", "cat", "<unk>"]
    assert dm.sizes == {"train": 10 + 4, "valid": 3, "test": 2}
    # shards are read in order 1, 2, 99
    assert dm.vocab.decode(np.asarray(dm.ids["train"][:4]).tolist()) == ["the", "cat", "<unk>", "<eos>"]
    assert dm.vocab.decode(np.asarray(dm.ids["train"][-3:]).tolist()) == ["cat", "the", "<eos>"]
    assert dm.vocab.decode(np.asarray(dm.ids["test"]).tolist()) == ["cat", "<eos>"]


def test_missing_corpus_names_folder_layouts_and_download(tmp_path):
    with pytest.raises(CorpusError) as e:
        RegistryCorpus("ptb", str(tmp_path / "ptb")).prepare(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "ptb") in msg and "ptb.train.txt, ptb.valid.txt, ptb.test.txt" in msg
    assert "data.download=true" in msg and corpus_spec("ptb").url in msg
    write_layout(tmp_path / "ptb", {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "x"}, (TRAIN, VALID, ""))
    with pytest.raises(CorpusError, match="found ptb.train.txt, ptb.valid.txt but not ptb.test.txt"):
        RegistryCorpus("ptb", str(tmp_path / "ptb")).prepare(tmp_path)


def test_small_blocks_give_the_same_ids(tmp_path, monkeypatch):
    """Streaming in blocks of whole lines: block boundaries change nothing."""
    root = tmp_path / "c"
    text = "".join(f"w{i % 7} w{i % 3} w{i % 11}\n" for i in range(300))
    write_layout(root, corpus_spec("text_dir").layouts[0], (text, "w1 w2\n", "w3\n"))
    big = load(RegistryCorpus("text_dir", str(root)), tmp_path / "big")
    monkeypatch.setattr(cache, "BLOCK_BYTES", 16)
    monkeypatch.setattr(cache.iter_blocks, "__defaults__", (16,))
    small = load(RegistryCorpus("text_dir", str(root)), tmp_path / "small")
    np.testing.assert_array_equal(np.asarray(big.ids["train"]), np.asarray(small.ids["train"]))
    assert big.vocab == small.vocab


# ---- download through a local HTTP server ---------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test's folder on loopback, with HTTP Range support for resumed downloads."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.ranges = []
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def make_tar(path: Path, members: dict, symlinks: dict | None = None) -> bytes:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path.read_bytes()


PTB_MEMBERS = {
    "simple-examples/data/ptb.train.txt": TRAIN,
    "simple-examples/data/ptb.valid.txt": VALID,
    "simple-examples/data/ptb.test.txt": TEST,
    "simple-examples/rnnlm-0.2b/README": "not a corpus file",
}


def ptb_corpus(tmp_path, url, sha256):
    spec = dataclasses.replace(corpus_spec("ptb"), url=url, sha256=sha256)
    return RegistryCorpus("ptb", str(tmp_path / "ptb"), download=True, downloads_dir=str(tmp_path / "dl"), spec=spec)


def test_download_extract_and_load(tmp_path, server):
    import hashlib

    served, base = server
    data = make_tar(served / "simple-examples.tgz", PTB_MEMBERS)
    corpus = ptb_corpus(tmp_path, f"{base}/simple-examples.tgz", hashlib.sha256(data).hexdigest())
    dm = load(corpus, tmp_path)
    assert dm.sizes == SIZES and dm.vocab_size == TYPES
    assert (tmp_path / "ptb" / "simple-examples" / "data" / "ptb.train.txt").is_file()
    assert not (tmp_path / "ptb" / "simple-examples" / "rnnlm-0.2b").exists()  # only the corpus members
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["simple-examples.tgz"]
    assert not [p for p in (tmp_path / "ptb").iterdir() if p.name.startswith(".")]  # no temporary left


def test_download_of_a_zip_archive(tmp_path, server):
    served, base = server
    with zipfile.ZipFile(served / "wikitext-2-v1.zip", "w") as zf:
        for split, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
            zf.writestr(f"wikitext-2/wiki.{split}.tokens", text)
    spec = dataclasses.replace(corpus_spec("wikitext2"), url=f"{base}/wikitext-2-v1.zip")
    corpus = RegistryCorpus("wikitext2", str(tmp_path / "wt2"), download=True, downloads_dir=str(tmp_path / "dl"), spec=spec)
    assert load(corpus, tmp_path).sizes == SIZES


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, server):
    served, base = server
    make_tar(served / "simple-examples.tgz", PTB_MEMBERS)
    corpus = ptb_corpus(tmp_path, f"{base}/simple-examples.tgz", "0" * 64)
    with pytest.raises(CorpusError, match="checksum mismatch.*deleted"):
        corpus.prepare(tmp_path)
    assert not (tmp_path / "ptb").exists() or not any((tmp_path / "ptb").iterdir())
    assert not any((tmp_path / "dl").iterdir())  # neither the file nor a .part


@pytest.mark.parametrize("bad", [{"../evil.txt": "x"}, {"/tmp/evil-abs.txt": "x"}])
def test_archive_member_escaping_the_folder_is_rejected(tmp_path, server, bad):
    served, base = server
    make_tar(served / "simple-examples.tgz", {**PTB_MEMBERS, **bad})
    corpus = ptb_corpus(tmp_path, f"{base}/simple-examples.tgz", None)
    with pytest.raises(CorpusError, match="outside the target folder"):
        corpus.prepare(tmp_path)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()
    assert not any((tmp_path / "ptb").iterdir())  # nothing half-extracted


def test_symlink_out_of_the_folder_is_rejected(tmp_path, server):
    served, base = server
    make_tar(served / "simple-examples.tgz", PTB_MEMBERS, symlinks={"simple-examples/data/link": "../../../../etc"})
    with pytest.raises(CorpusError, match="outside the target folder"):
        ptb_corpus(tmp_path, f"{base}/simple-examples.tgz", None).prepare(tmp_path)


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    import hashlib

    served, base = server
    data = make_tar(served / "simple-examples.tgz", PTB_MEMBERS)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "simple-examples.tgz.part").write_bytes(data[: len(data) // 2])
    corpus = ptb_corpus(tmp_path, f"{base}/simple-examples.tgz", hashlib.sha256(data).hexdigest())
    assert load(corpus, tmp_path).sizes == SIZES
    assert _Handler.ranges == [f"bytes={len(data) // 2}-"]
    assert (tmp_path / "dl" / "simple-examples.tgz").read_bytes() == data


def test_network_failure_says_what_to_do(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    corpus = ptb_corpus(tmp_path, f"http://127.0.0.1:{port}/simple-examples.tgz", None)
    with pytest.raises(CorpusError, match="(?s)failed.*Connection refused.*to fix: run again"):
        corpus.prepare(tmp_path)
    assert not (tmp_path / "ptb").exists()


# ---- the real corpora, when ../shared/data has them ----------------------------------------------
@pytest.mark.parametrize("name,folder", [("ptb", "ptb"), ("wikitext2", "wikitext-2")])
def test_published_counts_on_the_real_files(tmp_path, name, folder):
    root = SHARED_DATA / folder
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared corpora are not part of the package)")
    dm = load(RegistryCorpus(name, str(root)), tmp_path)
    published = corpus_spec(name).published
    assert dm.sizes == published["tokens"]
    assert dm.vocab_size == published["types"]
