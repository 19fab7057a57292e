"""tensorflow-datasets sources: `tfds:NAME[/CONFIG][:SPLIT]`, e.g. tfds:pg19, tfds:c4/en:validation.

Without TensorFlow, tfds reads data sets prepared in the array_record format through random-access data
sources (`builder.as_data_source`); that is the main path. A data set prepared as tfrecord (tfds' default
when TensorFlow is installed) needs tf.data (`pip install 'ctxjax[tf]'`): it is read as a stream, in the
order tfds wrote it (tfds shuffles examples when it prepares a data set), the order the array_record source
gives too, so both formats of one data set give the same batches.

Nothing here downloads: a data set that is not prepared is an error saying how to prepare it.
"""

from __future__ import annotations

import functools
import hashlib

from ctxjax.data.config import DataConfig, DataError
from ctxjax.data.document_source import DocumentSource, decode_utf8

# Text features of well-known long-document data sets, tried in order when data.text_field is None.
TEXT_FIELD_CANDIDATES = ("text", "book_text", "content", "document", "article")


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    return (f"prepare it once with `tfds build {name} --file_format=array_record{where}` (or in Python: "
            f"tfds.builder('{name}'{', data_dir=...' if data_dir else ''}).download_and_prepare("
            "file_format='array_record'))")


def _builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as registered_error:  # unknown name, or its builder code needs TensorFlow to import
        try:  # a prepared data set can still be read from its files alone
            from tensorflow_datasets.core import read_only_builder
            return read_only_builder.builder_from_files(name, data_dir=data_dir)
        except Exception:
            reason = str(registered_error).splitlines()[0]
            raise DataError(f"tfds data set {name!r} is neither prepared in "
                            f"{data_dir or 'the tfds data dir'} nor loadable ({reason}); check the name, set "
                            "data.tfds_data_dir, or "
                            f"{_prepare_hint(name, data_dir)}") from None


def _text_field(features, requested: str | None, name: str) -> str:
    import tensorflow_datasets as tfds

    text_features = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if requested:
        if requested not in features:
            raise DataError(f"tfds data set {name!r} has no feature {requested!r}; set data.text_field to "
                            f"one of {sorted(features)}")
        return requested
    for candidate in TEXT_FIELD_CANDIDATES:
        if candidate in text_features:
            return candidate
    if len(text_features) == 1:
        return text_features[0]
    raise DataError(f"tfds data set {name!r}: cannot tell which feature holds the document; set "
                    f"data.text_field to one of {sorted(text_features or features)}")


class TfdsSource(DocumentSource):
    """Random access to an array_record-prepared split through `builder.as_data_source`."""

    def __init__(self, data_source, field: str, spec: str, identity: str):
        self._ds, self.field, self.spec, self._identity = data_source, field, spec, identity

    def __len__(self):
        return len(self._ds)

    def text(self, i):
        return decode_utf8(self._ds[i][self.field], f"{self.spec}[{i}]")

    def fingerprint(self):
        return hashlib.sha1(self._identity.encode()).hexdigest()


class TfdsStreamSource(DocumentSource):
    """A tfrecord-prepared split read through tf.data (TensorFlow installed): streams that start anywhere.

    Document i is the i-th example of the split's files read one after another, the same order as the
    array_record data source gives. tfds slices a split by absolute index and opens only the files that hold
    the slice, so a reader starting at i skips just the earlier examples of i's own file. A read of the
    document right after one already read continues that reader; the pipeline reads a stream source in
    order (see shuffle.DocumentOrder), one run of documents per shard of this process, so each document is
    read once per epoch.
    """

    sequential = True
    MAX_READERS = 8  # open readers kept: one per shard of this process, and a spare after a rewind

    def __init__(self, builder, split: str, field: str, spec: str, identity: str):
        self._builder, self.field, self.spec, self._identity = builder, field, spec, identity
        self._pieces = _absolute_pieces(split, builder.info.splits)
        self._n = sum(stop - start for _, start, stop in self._pieces)
        self._readers: dict[int, object] = {}  # index of the next document -> iterator over the texts

    def __len__(self):
        return self._n

    def _instruction_from(self, i: int):
        """The split's documents from index i on, as a tfds read instruction."""
        import tensorflow_datasets as tfds

        parts = []
        for name, start, stop in self._pieces:
            if i < stop - start:
                parts.append(tfds.core.ReadInstruction(name, from_=start + i, to=stop))
            i = max(0, i - (stop - start))
        return sum(parts[1:], parts[0])

    def _open(self, i: int):
        import tensorflow_datasets as tfds

        _keep_tensorflow_off_accelerators()
        read_config = tfds.ReadConfig(
            interleave_cycle_length=1,  # files one after another: tfds' default interleaves 16 of them
            try_autocache=False)  # tfds would cache a small split in memory; each document is read once
        dataset = self._builder.as_dataset(split=self._instruction_from(i), shuffle_files=False,
                                           read_config=read_config)
        return iter(dataset.map(lambda example: example[self.field]).as_numpy_iterator())

    def text(self, i):
        if not 0 <= i < self._n:
            raise IndexError(f"{self.spec} has {self._n} documents, not {i + 1}")
        reader = self._readers.pop(i, None) or self._open(i)
        raw = next(reader)
        if i + 1 < self._n:
            self._readers[i + 1] = reader
        if len(self._readers) > self.MAX_READERS:
            del self._readers[next(iter(self._readers))]  # the least recently used
        return decode_utf8(raw, f"{self.spec}[{i}]")

    def fingerprint(self):
        return hashlib.sha1(self._identity.encode()).hexdigest()


def _absolute_pieces(split: str, splits) -> list[tuple[str, int, int]]:
    """"train[:10%]" -> [("train", 0, 700)]: the split as index ranges, so a reader can start anywhere."""
    import tensorflow_datasets as tfds

    pieces = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
    # tfds writes an open end as None
    return [(p.splitname, p.from_ or 0, splits[p.splitname].num_examples if p.to is None else p.to)
            for p in pieces]


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
        return True
    except ImportError:
        return False


@functools.cache  # once: TensorFlow takes the device list only before it starts
def _keep_tensorflow_off_accelerators():
    """tf.data only reads files here, but a GPU build of TensorFlow reserves most of every GPU's memory
    when it starts, memory that JAX needs; hide the GPUs from it (a no-op with tensorflow-cpu)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already started (the user's own tf code): its devices are its own
        pass


def _num_examples(splits, split: str, name: str) -> int:
    try:  # a slice ("train[:10%]", "train[100:200]") is checked against the split's size here
        return splits[split].num_examples
    except (ValueError, KeyError) as e:
        whole = split.partition("[")[0]
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"tfds data set {name!r}: cannot slice {split!r} ({reason}); its split {whole!r} has "
                        f"{splits[whole].num_examples} examples: slice within them, e.g. '{whole}[:10%]' or "
                        f"'{whole}[0:{splits[whole].num_examples}]'") from None


def open_tfds(arg: str, config: DataConfig) -> DocumentSource:
    name, _, split = arg.partition(":")  # the split keeps its own colons: "train[:10%]"
    split = split or "train"
    spec = f"tfds:{name}:{split}"
    data_dir = config.tfds_data_dir
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise DataError(f"tfds data set {name!r} is not prepared in {builder.data_dir}; "
                        f"{_prepare_hint(name, data_dir)}")
    info = builder.info
    known_splits = sorted(info.splits.keys())
    if split.partition("[")[0] not in known_splits:
        raise DataError(f"tfds data set {name!r} has no split {split!r}; use one of {known_splits} "
                        f"(e.g. data.source='tfds:{name}:{known_splits[0] if known_splits else 'train'}')")
    field = _text_field(info.features, config.text_field, name)
    identity = f"{info.full_name}:{split}:{field}:{_num_examples(info.splits, split, name)}"
    file_format = getattr(info, "file_format", None)
    file_format = str(getattr(file_format, "value", file_format) or "")  # FileFormat.TFRECORD -> "tfrecord"
    if "array_record" in file_format.lower():
        return TfdsSource(builder.as_data_source(split=split), field, spec, identity)
    if _tensorflow_available():
        return TfdsStreamSource(builder, split, field, spec, identity)
    raise DataError(f"tfds data set {name!r} is prepared as {file_format or 'tfrecord'}, which needs "
                    "TensorFlow; `pip install 'ctxjax[tf]'`, or re-prepare it with "
                    "--file_format=array_record")
