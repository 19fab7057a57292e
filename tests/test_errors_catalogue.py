"""docs/errors.md, row by row: each documented error is produced by its command, which exits 2 with one line
holding the documented text. A row without a case here, or a case without a row, fails the test."""

import json
import os
import re
import shutil

import hf_oracle as oracle
import pytest

from ctxjax import cli

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "configs", "demo.py:tiny")


def documented_rows() -> dict[str, list[str]]:
    """id -> the fragments its line must contain (the backticked spans of the third column)."""
    rows = {}
    for line in open(os.path.join(ROOT, "docs", "errors.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z0-9-]+`", cells[0]):
            rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[2])
    return rows


class Setup:
    """Directories the cases need, made on first use."""

    def __init__(self, tmp_path, factory):
        self.tmp, self.factory = tmp_path, factory

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def hf_dir(self, **config_changes) -> str:
        """A tiny Llama (no tokenizer) with `config_changes` written into its config.json (None deletes a
        key)."""
        directory = shutil.copytree(self.factory.llama, self.path(f"hf{len(os.listdir(self.tmp))}"))
        path = os.path.join(directory, "config.json")
        config = json.load(open(path))
        for key, value in config_changes.items():
            config.pop(key) if value is None else config.__setitem__(key, value)
        json.dump(config, open(path, "w"))
        return directory

    def imported(self) -> str:
        """A work directory made by import-hf (a params-only checkpoint at step 0)."""
        workdir = self.path(f"imported{len(os.listdir(self.tmp))}")
        assert cli.main(["import-hf", self.factory.llama, "--workdir", workdir]) == 0
        return workdir

    def train(self, *overrides: str, workdir: str | None = None) -> list[str]:
        return ["train", "--config", TINY, "--workdir", workdir or self.path("w"), *overrides]


def _damaged_meta(s: Setup) -> str:
    workdir = s.imported()
    open(os.path.join(workdir, "checkpoints", "0", "meta", "metadata"), "w").write("{")
    return workdir


def _bidirectional(s: Setup) -> str:
    """A work directory whose Llama checkpoint is marked causal=False (attends both ways)."""
    workdir = s.imported()
    path = os.path.join(workdir, "checkpoints", "0", "meta", "metadata")
    meta = json.load(open(path))
    meta["model_config"]["causal"] = False
    json.dump(meta, open(path, "w"))
    return workdir


def _sharded_with_bad_index(s: Setup) -> str:
    directory = s.hf_dir()
    os.rename(os.path.join(directory, "model.safetensors"),
              os.path.join(directory, "model-00001-of-00001.safetensors"))
    s.file(os.path.join(os.path.basename(directory), "model.safetensors.index.json"), '{"weight_map": {')
    return directory


def _truncated_weights(s: Setup) -> str:
    directory = s.hf_dir()
    path = os.path.join(directory, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return directory


NOT_A_STRING = json.dumps({"text": 5})
def remote_code_dir(s: Setup) -> str:
    """A model directory whose config names its own Python code (auto_map), which would leave a file if it
    ran."""
    directory = s.hf_dir(architectures=["CustomForCausalLM"], model_type="custom",
                         auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                   "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    sentinel = os.path.join(directory, "code-ran")
    for module in ("configuration_custom", "modeling_custom"):
        s.file(os.path.join(os.path.basename(directory), f"{module}.py"),
               f"open({sentinel!r}, 'w').close()\n")
    return directory


CASES = {
    "config-directory": lambda s: ["train", "--config", os.path.join(ROOT, "configs"), "--workdir",
                                   s.path("w")],
    "config-missing": lambda s: ["train", "--config", s.path("nope.py"), "--workdir", s.path("w")],
    "config-raises": lambda s: ["train", "--config", s.file("raises.py", "def get_config(variant=None):\n"
                                                                          "    return 1 / 0\n"),
                                "--workdir", s.path("w")],
    "config-not-configdict": lambda s: ["train", "--config", s.file("d.py", "def get_config(variant=None):\n"
                                                                            "    return {}\n"),
                                        "--workdir", s.path("w")],
    "override-unknown": lambda s: s.train("--config.model.d_modle=3"),
    "override-index": lambda s: s.train("--config.stages.5={'steps': 1}"),
    "override-type": lambda s: s.train("--config.tokens_per_step=abc"),
    "stage-not-dict": lambda s: s.train("--config.stages.0=5"),
    "stage-unknown-field": lambda s: s.train("--config.stages.0.warmup=3"),
    "stage-lr": lambda s: s.train("--config.stages.0.lr=-1e-3"),
    "stage-gate-no-eval": lambda s: s.train("--config.stages.1.gate={'metric': 'ppl/fixed_target', "
                                            "'max': 9}"),
    "stage-gate-metric": lambda s: s.train("--config.eval_at_stage_end=True",
                                           "--config.stages.1.gate={'metric': 'needle/acc', 'min': 0.5}"),
    "min-lr-ratio": lambda s: s.train("--config.min_lr_ratio=5"),
    "log-every": lambda s: s.train("--config.log_every=0"),
    "checkpoint-every": lambda s: s.train("--config.checkpoint.every_steps=-1"),
    "checkpoint-keep": lambda s: s.train("--config.checkpoint.max_to_keep=0"),
    "stage-rope-factor": lambda s: s.train("--config.stages.1.position={'rope_type': 'yarn', 'factor': 0.5, "
                                           "'original_max_position_embeddings': 16}"),
    "export-dir-workdir": lambda s: s.train("--config.export_dir='.'"),
    "export-dir-checkpoints": lambda s: s.train("--config.export_dir='checkpoints'"),
    "export-dir-not-empty": lambda s: s.train(
        f"--config.export_dir={os.path.dirname(s.file('mine/a.txt', 'x'))!r}"),
    "workdir-url": lambda s: s.train(workdir="gs://bucket/run"),
    "workdir-is-file": lambda s: s.train(workdir=s.file("a-file", "x")),
    "imported-without-tokenizer": lambda s: ["train", "--config",
                                             os.path.join(ROOT, "configs", "llama_extend.py:tiny"),
                                             "--workdir", s.imported(), "--config.data.tokenizer=''"],
    "mlm-decoder": lambda s: s.train("--config.data.objective=mlm", "--config.data.tokenizer=bytes+mask",
                                     "--config.model.vocab_size=259"),
    "encoder-next-token": lambda s: s.train("--config.model.causal=False"),
    "mlm-no-mask-token": lambda s: s.train("--config.model.causal=False", "--config.data.objective=mlm",
                                          "--config.export_dir="),
    "jsonl-text-not-string": lambda s: s.train(
        f"--config.data.source='jsonl:{s.file('d.jsonl', NOT_A_STRING)}'",
        "--config.data.on_decode_error='fail'"),
    "no-checkpoints": lambda s: ["export", "--workdir", os.path.dirname(s.file("empty/x", "")),
                                 "--out", s.path("o")],
    "checkpoint-damaged": lambda s: ["export", "--workdir", _damaged_meta(s), "--step", "0",
                                     "--out", s.path("o")],
    "no-checkpoint-readable": lambda s: ["export", "--workdir", _damaged_meta(s), "--out", s.path("o")],
    "export-holds-workdir": lambda s: ["export", "--workdir", (w := s.imported()), "--out", w, "--overwrite"],
    "export-inside-checkpoints": lambda s: ["export", "--workdir", (w := s.imported()), "--out",
                                            os.path.join(w, "checkpoints", "9")],
    "export-not-empty": lambda s: ["export", "--workdir", s.imported(),
                                   "--out", os.path.dirname(s.file("m/a", "x"))],
    "export-not-ctxjax": lambda s: ["export", "--workdir", s.imported(),
                                    "--out", os.path.dirname(s.file("m/a", "x")), "--overwrite"],
    "hf-no-config": lambda s: ["import-hf", os.path.dirname(s.file("nomodel/a", "x")),
                               "--workdir", s.path("w")],
    "hf-config-not-json": lambda s: ["info",
                                     os.path.dirname(s.file("badjson/config.json", "{\"vocab_size\": "))],
    "hf-config-field-missing": lambda s: ["import-hf", s.hf_dir(vocab_size=None), "--workdir", s.path("w")],
    "hf-rope-factor-not-number": lambda s: ["import-hf", s.hf_dir(rope_scaling={"rope_type": "linear",
                                                                               "factor": "four"}),
                                            "--workdir", s.path("w")],
    "hf-unsupported": lambda s: ["info", s.hf_dir(architectures=["CustomForCausalLM"], model_type="custom")],
    "hf-roberta-offset": lambda s: ["info", os.path.dirname(s.file("roberta/config.json", json.dumps(
        {"architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "vocab_size": 97,
         "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 48,
         "max_position_embeddings": 2, "pad_token_id": 1})))],
    "hf-export-bidirectional": lambda s: ["export", "--workdir", _bidirectional(s), "--out", s.path("o")],
    "hf-truncated-weights": lambda s: ["import-hf", _truncated_weights(s), "--workdir", s.path("w")],
    "hf-index-not-json": lambda s: ["import-hf", _sharded_with_bad_index(s), "--workdir", s.path("w")],
    "hf-remote-code": lambda s: ["check-logits", remote_code_dir(s), "--workdir", s.imported(),
                                 "--lengths", "8"],
    "prompt-file-missing": lambda s: ["generate", "--hf", s.factory.llama, "--tokenizer", "bytes",
                                      "--prompt-file", s.path("nope.txt")],
    "prompt-file-binary": lambda s: ["generate", "--hf", s.factory.llama, "--tokenizer", "bytes",
                                     "--prompt-file", s.file("bin", b"\x00\xff\xfe")],
    "eval-nothing": lambda s: ["eval", "--hf", s.factory.llama, "--tokenizer", "bytes", "--tasks", "ppl",
                               "--lengths", "32", "--source", f"text:{s.file('short.txt', 'too short')}",
                               "--out", s.path("eval")],
    "eval-task": lambda s: ["eval", "--hf", s.path("model"), "--tasks", "ruler,bogus"],
    "plan-topology": lambda s: ["plan", "--config", TINY, "--topology", "v7x-8"],
    "plan-memory-limit": lambda s: ["plan", "--config", TINY, "--topology", "v5e-1", "--memory-limit", "0"],
    "plan-compare": lambda s: ["plan", "--config", TINY, "--topology", "v5e-1", "--compare", "full"],
    "ulysses-heads": lambda s: s.train("--config.mesh.fsdp=1", "--config.mesh.data=2",
                                       "--config.mesh.sequence=4", "--config.execution.attention=ulysses",
                                       "--config.model.n_heads=6",
                                       "--config.model.n_kv_heads=6", "--config.model.d_model=48"),
}


class Factory:
    def __init__(self):
        self.llama = oracle.save(oracle.llama(vocab_size=258))  # the byte tokenizer's vocabulary fits


@pytest.fixture(scope="module")
def factory():
    return Factory()


def test_every_documented_error_has_a_case_and_every_case_a_row():
    assert sorted(documented_rows()) == sorted(CASES)


@pytest.mark.parametrize("error_id", sorted(documented_rows()))
def test_documented_error(error_id, factory, tmp_path, capsys):
    argv = CASES[error_id](Setup(tmp_path, factory))
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-5:]
    line = err[-1]
    assert line.startswith(f"ctxjax {argv[0]}: error: "), err[-5:]
    for fragment in documented_rows()[error_id]:
        assert fragment in line, (fragment, line)
    assert not [p for p in tmp_path.rglob("code-ran")]  # no model directory's own code ever runs
