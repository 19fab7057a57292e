"""What every document source is: random access to the text of document i, and a fingerprint that changes
when the documents may have (it keys the token cache). In a module of its own so that source kinds defined in
other files (tfds_source.py, retrieval_source.py) and the registry in sources.py can all import it."""

from __future__ import annotations


class UndecodableDocument(Exception):
    """Document i is not valid UTF-8 (or not valid JSON); the pipeline skips or fails by config."""


def decode_utf8(raw: bytes | str, where: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UndecodableDocument(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None


class DocumentSource:
    """Base of all sources: `len(source)` documents, `source.text(i)` the text of one."""

    spec: str = ""
    local_files: bool = False  # True when tokenizing every document up front is cheap enough

    def __len__(self) -> int:
        raise NotImplementedError

    def text(self, i: int) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes whenever the documents may have changed; keys the token cache."""
        raise NotImplementedError
