"""Character-level text corpora: found in the data root or downloaded, checked, encoded, split.

tiny-shakespeare (Karpathy's char-rnn data, 1,115,394 characters) is the standard
character-level benchmark; it is split as nanoGPT's ``data/shakespeare_char/prepare.py`` splits
it, so that losses compare with nanoGPT's: the vocabulary is the sorted set of the corpus's
characters, the first 90 % is the training split and the last 10 % the held-out ("val") split.
Learning rates are tuned on a slice cut from the end of the training split, never on the
held-out split. The smoke corpus is a few modules of the Python standard library's source,
which every machine that runs this package has.
"""
from __future__ import annotations

import hashlib
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .images_data import DataError, DataNotFoundError, default_root

#: Fraction of the corpus that is the training split (nanoGPT's prepare.py: ``int(n*0.9)``).
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class CorpusSource:
    """Where a corpus comes from: a file under ``<data root>/<name>/``, its canonical URL and
    its md5 (``url=None``: built locally, see :data:`STDLIB_MODULES`)."""
    name: str
    filename: str
    url: str | None
    md5: str | None
    title: str


#: Corpora by name.
CORPORA: dict[str, CorpusSource] = {}


def register_corpus(source: CorpusSource) -> CorpusSource:
    if source.name in CORPORA:
        raise ValueError(f"corpus {source.name!r} is already registered")
    CORPORA[source.name] = source
    return source


register_corpus(CorpusSource(
    "tinyshakespeare", "input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "6fb458f1232090904fb40fe944165e91", "tiny-shakespeare"))
#: A small text every Python installation has, for smoke runs (CI, tests).
register_corpus(CorpusSource("python_stdlib", "stdlib.txt", None, None,
                             "Python standard-library source"))
STDLIB_MODULES = ("textwrap.py", "fnmatch.py", "shlex.py", "bisect.py", "heapq.py")


def check_corpus(name: str) -> CorpusSource:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid corpora: {', '.join(CORPORA)}")
    return CORPORA[name]


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stdlib_text() -> str:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return "".join((lib / m).read_text(encoding="utf-8") for m in STDLIB_MODULES)


def corpus_path(name: str = "tinyshakespeare", root=None, download: bool = True) -> Path:
    """The corpus file, checked: ``<root>/<name>/<file>`` if it is there with the right md5,
    else downloaded there from the canonical URL (``download``). Raises DataNotFoundError
    saying where to put the file, or ValueError if a file there has the wrong md5 (the file is
    left alone: nothing on disk is deleted)."""
    source = check_corpus(name)
    path = Path(root or default_root()) / name / source.filename
    if source.url is None:  # built from this machine's files
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(_stdlib_text(), encoding="utf-8")
            tmp.replace(path)
        return path
    if not path.exists():
        if not download:
            raise DataNotFoundError(f"{source.title} is not at {path}; put {source.filename} "
                                    f"(md5 {source.md5}) there, from {source.url}")
        made = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        try:
            try:
                with urllib.request.urlopen(source.url, timeout=30) as r, open(tmp, "wb") as f:
                    f.write(r.read())
            except (urllib.error.URLError, OSError) as exc:
                raise DataNotFoundError(f"{source.title} is not at {path} and could not be "
                                        f"downloaded from {source.url} ({exc}); copy "
                                        f"{source.filename} (md5 {source.md5}) there by "
                                        "hand") from exc
            if md5_of(tmp) != source.md5:
                raise DataError(f"the download of {source.url} has md5 {md5_of(tmp)}, "
                                f"expected {source.md5}; nothing was saved")
        except BaseException:
            tmp.unlink(missing_ok=True)
            if made and not any(path.parent.iterdir()):
                path.parent.rmdir()  # leave no empty folder behind
            raise
        tmp.replace(path)
    got = md5_of(path)
    if got != source.md5:
        raise DataError(f"{path} has md5 {got}, expected {source.md5} ({source.title}); "
                        "replace it with the canonical file or pass another data root")
    return path


@dataclass(frozen=True)
class Splits:
    """A corpus encoded as character ids: the training split without the tuning slice
    (``train``), the tuning slice (``tune``, the training split's last ``tune_chars``) and the
    held-out split (``val``), 1-d int64 tensors; ``chars`` is the vocabulary."""
    train: torch.Tensor
    tune: torch.Tensor
    val: torch.Tensor
    chars: str
    corpus: str

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"characters {unknown[:10]!r} are not in the corpus's vocabulary")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split_text(text: str, tune_chars: int = 0, corpus: str = "text") -> Splits:
    """nanoGPT's split of ``text`` (vocabulary of the whole text, first 90 % train, last 10 %
    held out), with the training split's last ``tune_chars`` characters cut off as the tuning
    slice."""
    if not text:
        raise DataError(f"the corpus {corpus!r} is empty; its file must hold the text")
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = int(len(ids) * TRAIN_FRACTION)
    if not 0 <= tune_chars < n // 2:
        raise ValueError(f"tune_chars must be in [0, {n // 2}) for a training split of {n} "
                         f"characters, got {tune_chars}")
    return Splits(ids[:n - tune_chars], ids[n - tune_chars:n], ids[n:], chars, corpus)


def read_corpus(name: str = "tinyshakespeare", root=None, download: bool = True) -> str:
    """The text of corpus ``name`` (:func:`corpus_path`); DataError naming the file if it is
    empty or not UTF-8 text."""
    path = corpus_path(name, root, download)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); replace it") from exc
    if not text:
        raise DataError(f"{path} is empty; it must hold the corpus's text (delete it to "
                        "have it built or downloaded again)")
    return text


def load_corpus(name: str = "tinyshakespeare", root=None, tune_chars: int = 0,
                download: bool = True) -> Splits:
    """The corpus ``name``, split (:func:`split_text`)."""
    return split_text(read_corpus(name, root, download), tune_chars, name)
