"""Document sources named by a string: random access to the text of document i.

    stdlib[:train|eval|all]     the running Python's standard library (see stdlib_corpus.py)
    text:GLOB                   one document per file
    jsonl:GLOB[:FIELD]          one document per line, the text under FIELD (default "text")
    tfds:NAME[/CONFIG][:SPLIT]  a prepared tensorflow-datasets data set (see tfds_source.py)
    retrieval[:TASKS][:OPT=V]   synthetic passkey / multikey documents (see retrieval_source.py)
    mix:W*SPEC;W*SPEC...        several sources in one, each's documents repeated W times per epoch
                                (W < 1: an evenly spaced W-fraction of them), e.g. mix:3*tfds:pg19;1*stdlib

Random access (rather than a stream) is what lets every process read only its own documents, lets the
pipeline shuffle without a buffer, and lets a restored run seek straight to where it was.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import math
import json
import mmap
import os
from typing import Callable, Sequence

import numpy as np

from ctxjax.data import stdlib_corpus, tfds_source
from ctxjax.data.config import DataConfig, DataError
from ctxjax.data.document_source import DocumentSource, UndecodableDocument, decode_utf8
from ctxjax.data.retrieval_source import open_retrieval


class ListSource(DocumentSource):
    """Documents given as Python strings (or bytes), for notebooks and tests."""

    def __init__(self, texts: Sequence[str | bytes], spec: str = "list"):
        self._texts = list(texts)
        self.spec = spec
        self.local_files = True

    def __len__(self):
        return len(self._texts)

    def text(self, i):
        return decode_utf8(self._texts[i], f"{self.spec}[{i}]")

    def fingerprint(self):
        h = hashlib.sha1()
        for t in self._texts:
            h.update(t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t)
            h.update(b"\0")
        return h.hexdigest()


def _files_fingerprint(spec: str, paths: Sequence[str]) -> str:
    h = hashlib.sha1(spec.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _glob_files(pattern: str, spec: str) -> list[str]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"data.source={spec!r}: the glob {pattern!r} matches no file; check the path (use ** "
                        "with a recursive pattern, quote it so the shell does not expand it)")
    return paths


class FileSource(DocumentSource):
    """One document per file."""

    def __init__(self, paths: Sequence[str], spec: str):
        self.paths = list(paths)
        self.spec = spec
        self.local_files = True

    def __len__(self):
        return len(self.paths)

    def text(self, i):
        with open(self.paths[i], "rb") as f:
            return decode_utf8(f.read(), self.paths[i])

    def fingerprint(self):
        return _files_fingerprint(self.spec, self.paths)


class JsonlSource(DocumentSource):
    """One document per non-blank line of JSON-lines files; the text is under `field`.

    Line boundaries are found once when the source opens (one pass over the bytes), so later reads seek.
    """

    def __init__(self, paths: Sequence[str], field: str, spec: str):
        self.paths = list(paths)
        self.field = field
        self.spec = spec
        self.local_files = True
        file_ids, starts, ends = [], [], []
        for fid, path in enumerate(self.paths):
            s, e = _nonblank_line_spans(path)
            file_ids.append(np.full(len(s), fid, np.int32))
            starts.append(s)
            ends.append(e)
        self._file = np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32)
        self._start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._end = np.concatenate(ends) if ends else np.zeros(0, np.int64)

    def __len__(self):
        return len(self._file)

    def text(self, i):
        path = self.paths[self._file[i]]
        with open(path, "rb") as f:
            f.seek(int(self._start[i]))
            raw = f.read(int(self._end[i] - self._start[i]))
        where = f"{path} line starting at byte {self._start[i]}"
        try:
            record = json.loads(decode_utf8(raw, where))
        except json.JSONDecodeError as e:
            raise UndecodableDocument(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or self.field not in record:
            keys = sorted(record)[:10] if isinstance(record, dict) else "none"
            raise DataError(f"{where} has no field {self.field!r}; name the text field as "
                            f"'jsonl:GLOB:FIELD' (keys here: {keys})")
        text = record[self.field]
        if not isinstance(text, str):  # str() would train on "None" or "5" as if they were documents
            raise UndecodableDocument(f"{where}: {self.field!r} is {json.dumps(text)[:40]}, not a string")
        return text

    def fingerprint(self):
        return _files_fingerprint(f"{self.spec}\0{self.field}", self.paths)


def _nonblank_line_spans(path: str) -> tuple[np.ndarray, np.ndarray]:
    if os.path.getsize(path) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        data = np.frombuffer(m, np.uint8)
        newlines = np.flatnonzero(data == ord("\n"))
        starts = np.concatenate([[0], newlines + 1])
        ends = np.concatenate([newlines, [len(data)]])
        is_space = np.isin(data, np.frombuffer(b" \t\r\n", np.uint8))
        # A line is blank when it holds only whitespace: compare non-space counts at its two ends.
        nonspace_before = np.concatenate([[0], np.cumsum(~is_space)])
        keep = nonspace_before[ends] > nonspace_before[starts]
        del data, is_space  # release the views before the mmap closes
        return starts[keep].astype(np.int64), ends[keep].astype(np.int64)


def _open_stdlib(arg: str, config: DataConfig) -> DocumentSource:
    split = arg or "train"
    return FileSource(stdlib_corpus.stdlib_files(split), f"stdlib:{split}")


def _open_text(arg: str, config: DataConfig) -> DocumentSource:
    return FileSource(_glob_files(arg, f"text:{arg}"), f"text:{arg}")


def _open_jsonl(arg: str, config: DataConfig) -> DocumentSource:
    pattern, field = arg, config.text_field or "text"
    head, sep, tail = arg.rpartition(":")
    if sep and tail and "/" not in tail and "*" not in tail and "." not in tail:
        pattern, field = head, tail
    return JsonlSource(_glob_files(pattern, f"jsonl:{arg}"), field, f"jsonl:{arg}")


def _open_tfds(arg: str, config: DataConfig) -> DocumentSource:
    # tensorflow_datasets is imported only when a tfds source is used.
    return tfds_source.open_tfds(arg, config)


class MixtureSource(DocumentSource):
    """Sources one after another, source k's documents repeated `weights[k]` times (a fraction: every 1/w-th
    document). Still random access with a fixed length, so shuffling, sharding and resuming work unchanged;
    the pipeline's shuffle spreads the repeats over the epoch."""

    def __init__(self, sources: Sequence[DocumentSource], weights: Sequence[float], spec: str):
        self.sources, self.spec = list(sources), spec
        for src in self.sources:
            if getattr(src, "sequential", False):
                raise DataError(f"data.source={spec!r}: {src.spec!r} is prepared as tfrecord, read only in "
                                "order, which a mixture cannot interleave; prepare it with tfds build "
                                "--file_format=array_record")
        self.counts = [round(w * len(src)) for src, w in zip(self.sources, weights)]
        for src, w, count in zip(self.sources, weights, self.counts):
            if not 1 <= count < 2**31:
                raise DataError(f"data.source={spec!r}: weight {w:g} x {len(src)} documents of {src.spec!r} "
                                f"makes {count:g} per epoch; choose a weight between {1 / len(src):.3g} and "
                                f"{2**31 / len(src):.3g}")
        self.starts = np.cumsum([0, *self.counts])
        self.base_starts = [int(x) for x in np.cumsum([0, *(len(src) for src in self.sources)])]
        self.local_files = all(src.local_files for src in self.sources)

    def __len__(self):
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        """Mixture index -> (part k, document j of part k)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, (i - int(self.starts[k])) * len(self.sources[k]) // self.counts[k]

    def text(self, i):
        k, j = self._locate(i)
        return self.sources[k].text(j)

    def base_id(self, i: int) -> int:
        """One number per distinct underlying document: repeats of a document share it (tokenized once)."""
        k, j = self._locate(i)
        return self.base_starts[k] + j

    def fingerprint(self):
        parts = [f"{src.fingerprint()}*{count}" for src, count in zip(self.sources, self.counts)]
        return hashlib.sha1(("mix:" + ";".join(parts)).encode()).hexdigest()


MIX_EXAMPLE = "mix:3*tfds:pg19;1*text:/data/*.txt"


def mixture_parts(arg: str, spec: str) -> list[tuple[float, str]]:
    """'3*tfds:pg19;0.5*stdlib' -> [(3.0, 'tfds:pg19'), (0.5, 'stdlib')]."""
    parts = []
    for item in filter(None, (x.strip() for x in arg.split(";"))):
        weight, sep, inner = (x.strip() for x in item.partition("*"))
        try:
            value = float(weight) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0) or not inner or inner.startswith("mix:"):
            raise DataError(f"data.source={spec!r}: {item!r} is not WEIGHT*SPEC with a finite weight > 0 and "
                            f"a source other than mix; write e.g. {MIX_EXAMPLE} (a glob may not hold ';')")
        parts.append((value, inner))
    if not parts:
        raise DataError(f"data.source={spec!r} names no source; write e.g. {MIX_EXAMPLE}")
    return parts


def _open_mix(arg: str, config: DataConfig) -> DocumentSource:
    parts = mixture_parts(arg, f"mix:{arg}")
    return MixtureSource([open_source(inner, config) for _, inner in parts], [w for w, _ in parts],
                         f"mix:{arg}")


SOURCE_KINDS: dict[str, Callable[[str, DataConfig], DocumentSource]] = {
    "stdlib": _open_stdlib, "text": _open_text, "jsonl": _open_jsonl, "tfds": _open_tfds,
    "retrieval": open_retrieval, "mix": _open_mix,
}


class _Truncated(DocumentSource):
    """The first n documents of another source (data.max_documents)."""

    def __init__(self, inner: DocumentSource, n: int):
        self.inner, self.n = inner, min(n, len(inner))
        self.spec, self.local_files = inner.spec, inner.local_files

    def __len__(self):
        return self.n

    def text(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.inner.text(i)

    def fingerprint(self):
        return hashlib.sha1(f"{self.inner.fingerprint()}:{self.n}".encode()).hexdigest()


def open_source(spec: str | DocumentSource, config: DataConfig | None = None) -> DocumentSource:
    """The source named by `spec` (or `spec` itself when it already is one), limited by max_documents."""
    config = config or DataConfig()
    if isinstance(spec, DocumentSource):
        source = spec
    else:
        kind, _, arg = spec.partition(":")
        if kind not in SOURCE_KINDS:
            raise DataError(f"data.source={spec!r} has unknown kind {kind!r}; use one of "
                            "stdlib[:SPLIT], text:GLOB, jsonl:GLOB[:FIELD], tfds:NAME[/CONFIG][:SPLIT], "
                            "retrieval[:TASKS][:OPTION=VALUE], mix:W*SPEC;W*SPEC")
        source = SOURCE_KINDS[kind](arg, config)
    # A mixture's parts are limited one by one (as opened above), so that each keeps its share.
    if config.max_documents is not None and not isinstance(source, MixtureSource):
        source = _Truncated(source, config.max_documents)
    if len(source) == 0:
        raise DataError(f"data.source={source.spec!r} holds no document; point it at non-empty data")
    return source


def eval_source_spec(config: DataConfig) -> str:
    """The held-out counterpart of config.source: data.eval_source, or a derived one."""
    if config.eval_source:
        return config.eval_source
    kind, _, arg = config.source.partition(":")
    if kind == "mix":  # each part's held-out split once: repeats would only score the same documents again
        # Synthetic retrieval documents have nothing to hold out (ctxjax eval's passkey/multikey tasks measure
        # them).
        natural = [inner for _, inner in mixture_parts(arg, config.source)
                   if inner.partition(":")[0] != "retrieval"]
        if natural:
            return "mix:" + ";".join(f"1*{eval_source_spec(dataclasses.replace(config, source=inner))}"
                                     for inner in natural)
    if kind == "stdlib":
        return "stdlib:eval"
    if kind == "tfds":
        return f"tfds:{arg.partition(':')[0]}:validation"
    raise DataError(f"no held-out split is known for data.source={config.source!r}; set data.eval_source")
