"""tensorflow-datasets sources: `tfds:NAME[/CONFIG][:SPLIT]`, e.g. tfds:pg19, tfds:c4/en:validation.

Without TensorFlow, tfds reads data sets prepared in the array_record format through random-access data
sources (`builder.as_data_source`); that is the main path. A data set prepared as tfrecord (tfds' default
when TensorFlow is installed) needs tf.data: it is read as a stream, in the order tfds wrote it (tfds
shuffles examples when it prepares a data set), which works only when TensorFlow is installed.

Nothing here downloads: a data set that is not prepared is an error saying how to prepare it.
"""

from __future__ import annotations

import hashlib

from ctxjax.data.config import DataConfig, DataError
from ctxjax.data.sources import DocumentSource, decode_utf8

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
    """A tfrecord-prepared split read through tf.data (TensorFlow installed): sequential, seeks by skipping.

    Reads in increasing index order are cheap; an earlier index restarts the stream. The pipeline reads a
    stream source in order (see shuffle.DocumentOrder), so a run touches each document once per epoch.
    """

    sequential = True

    def __init__(self, builder, split: str, field: str, spec: str, identity: str, num_examples: int):
        self._builder, self._split, self.field, self.spec = builder, split, field, spec
        self._identity, self._n = identity, num_examples
        self._iterator, self._next_index = None, 0

    def __len__(self):
        return self._n

    def text(self, i):
        if self._iterator is None or i < self._next_index:
            dataset = self._builder.as_dataset(split=self._split, shuffle_files=False).skip(i)
            self._iterator, self._next_index = iter(dataset.as_numpy_iterator()), i
        while self._next_index < i:
            next(self._iterator)
            self._next_index += 1
        example = next(self._iterator)
        self._next_index += 1
        return decode_utf8(example[self.field], f"{self.spec}[{i}]")

    def fingerprint(self):
        return hashlib.sha1(self._identity.encode()).hexdigest()


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
        return True
    except ImportError:
        return False


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
    identity = f"{info.full_name}:{split}:{field}:{info.splits[split].num_examples}"
    file_format = str(getattr(info, "file_format", "") or "")
    if "array_record" in file_format.lower():
        return TfdsSource(builder.as_data_source(split=split), field, spec, identity)
    if _tensorflow_available():
        return TfdsStreamSource(builder, split, field, spec, identity, info.splits[split].num_examples)
    raise DataError(f"tfds data set {name!r} is prepared as {file_format or 'tfrecord'}, which needs "
                    "TensorFlow; `pip install 'ctxjax[tf]'`, or re-prepare it with "
                    "--file_format=array_record")
