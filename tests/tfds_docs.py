"""A tiny tensorflow-datasets builder for tests: given documents per split, nothing downloaded. Like pg19 each
example has a `title` and a `book_text` feature."""

import tensorflow_datasets as tfds


def docs_builder(class_name: str, docs: dict[str, list[str]]):
    """A GeneratorBasedBuilder subclass called `class_name` (tfds registers it under its snake_case name)."""

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"title": tfds.features.Text(), "book_text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in docs}

    def _generate_examples(self, split):
        for i, text in enumerate(docs[split]):
            yield i, {"title": f"title {i}", "book_text": text}

    return type(class_name, (tfds.core.GeneratorBasedBuilder,), dict(
        VERSION=tfds.core.Version("1.0.0"), _info=_info, _split_generators=_split_generators,
        _generate_examples=_generate_examples))
