"""The data pipeline of each stage: `data.source`, or the stage's own `data_source` (e.g. retrieval documents
as long as that stage's rows, docs/demo.md).

Every pipeline shares the tokenizer resolved for `data.source` (trained on it when none exists) and the token
cache. A stage reading the same source as the stage before it continues that stream; a stage that switches
source reads its source from the start, so that where a stage's data begins never depends on where a run was
resumed. Only the current stage's iterator state is checkpointed; it says which source it belongs to.
"""

from __future__ import annotations

from ctxjax.data import DataError, make_pipeline


class StageData:
    def __init__(self, data_config, workdir: str, stages, model_vocab_size: int, resumed_state: dict | None):
        # data.source first: it resolves (or trains) the tokenizer that every other source is cut with.
        main = make_pipeline(data_config, workdir, model_vocab_size=model_vocab_size)
        self._pipes = {main.source.spec: main}  # by the opened source's own spec ("stdlib" -> "stdlib:train")
        self._spec_of = {"": main.source.spec}  # what a stage gives -> that spec
        try:  # open every source now: a bad spec fails before anything trains
            for given in sorted({s.data_source for s in stages} - set(self._spec_of)):
                pipe = make_pipeline(data_config, workdir, source=given, tokenizer=main.tokenizer,
                                     model_vocab_size=model_vocab_size)
                self._spec_of[given] = pipe.source.spec
                if pipe.source.spec in self._pipes:  # data.source by another name
                    pipe.close()
                else:
                    self._pipes[pipe.source.spec] = pipe
        except BaseException:
            self.close()
            raise
        self._fresh = {spec: pipe.state() for spec, pipe in self._pipes.items()}
        self._resumed_state = resumed_state
        self.pipe = main
        self._source = None  # the source of the stage entered last

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    def enter(self, stage, step: int):
        """The pipeline for `stage`, entered at global `step` (its first step, or a resumed one inside it)."""
        source = self._spec_of[stage.data_source]
        pipe = self._pipes[source]
        if self._source is None and self._resumed_state is not None:  # the first stage of a resumed run
            saved = self._resumed_state.get("source")
            if saved == source:
                pipe.restore(self._resumed_state)
            elif step != stage.start:
                raise DataError(f"the checkpoint at step {step} was reading data.source={saved!r}, but stage "
                                f"{stage.index} now reads {source!r}; resume with the stage's data_source as "
                                "it was, or choose a new --workdir")
            else:
                pipe.restore(self._fresh[source])
        elif source != self._source:
            self.pipe.close()  # its prefetching thread would prepare batches nobody asks for
            pipe.restore(self._fresh[source])
        self.pipe, self._source = pipe, source
        return pipe

    def close(self):
        for pipe in self._pipes.values():
            pipe.close()
