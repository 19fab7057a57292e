"""The interface every document source implements (sources.py names and opens them), in a module of its own
so that a source kind defined in another file (retrieval_source.py) and the registry can both import it."""

from __future__ import annotations


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
