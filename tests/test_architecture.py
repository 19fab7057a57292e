"""The structure docs/architecture.md describes, checked: imports run one way through the layers with no
cycles; no code outside ctxjax/positions/ asks a positional scheme for its name; ModelConfig holds the
architecture alone; and a positional scheme defined in this file trains and evaluates without touching any
other file."""

import ast
import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import pytest
from test_train import tiny

from ctxjax import ModelConfig, positions
from ctxjax.adaptation import AdaptationConfig
from ctxjax.evaluate import run_evaluation
from ctxjax.execution import ExecutionConfig
from ctxjax.train import train_and_evaluate

PACKAGE = pathlib.Path(__file__).parent.parent / "ctxjax"
# Lower layers first; a module may import its own layer or a lower one (docs/architecture.md).
LAYERS = {
    "core": ("errors", "fs", "dataclass_config", "xla_flags", "tpu_plugin", "compile_cache", "config",
             "execution", "adaptation", "positions", "attention", "model", "loss", "sharding", "schedule",
             "flops", "lora", "optimizer", "__init__"),
    "io": ("hf", "checkpoint", "data"),
    "apps": ("train", "evaluate", "generate", "study", "plan"),
    "commands": ("commands", "cli", "__main__"),
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "__init__"]


def runtime_imports(path: pathlib.Path):
    """(ctxjax module imported, line, inside a function?) for every import that runs (TYPE_CHECKING blocks
    are for type checkers only)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    in_function = {id(n) for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from ctxjax.data import pipeline` imports the submodule, `from ctxjax.data import X` the
            # package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            if target == "ctxjax" or target.startswith("ctxjax."):
                while target not in MODULES:  # `import ctxjax.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                yield target, node.lineno, id(node) in in_function


GRAPH = {module: sorted({t for t, _, _ in runtime_imports(path)} - {module})
         for module, path in MODULES.items()}


def test_imports_run_downward_through_the_layers_and_never_inside_functions():
    problems = []
    for module, path in MODULES.items():
        for target, line, inside in runtime_imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if layer(target) > layer(module):
                problems.append(f"{where}: upward ({list(LAYERS)[layer(module)]} -> "
                                f"{list(LAYERS)[layer(target)]})")
            if inside:
                problems.append(f"{where} inside a function (only optional heavy dependencies are imported "
                                "there)")
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_cycle():
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in GRAPH[module]:
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_code_outside_the_positional_schemes_asks_a_scheme_for_its_name():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "positions" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if ".name ==" in code and "position" in code or ".name !=" in code and "position" in code:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
            # A scheme's name compared with something is a branch on it; naming one to build a config (a
            # recipe, the study's arms) is what users do too.
            compares = any(op in code for op in ("==", "!=", " in "))
            if compares and any(f'"{name}"' in code and "position" in code for name in positions.SCHEMES
                                if name != "none"):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_model_config_holds_the_architecture_only():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    elsewhere = {f.name for f in dataclasses.fields(ExecutionConfig)} | {f.name for f in dataclasses.fields(
        AdaptationConfig)} | {"hf_architecture"}
    assert not fields & elsewhere


@dataclasses.dataclass(frozen=True)
class Halved(positions.PositionScheme):
    """A scheme only this test knows: RoPE's rotation at half the position, and no Hugging Face equivalent."""

    name = "halved-rope-test"
    theta: float = 10000.0

    def rotate(self, q, k, positions_):
        return positions.Rope(theta=self.theta).rotate(q, k, positions_ // 2)


@pytest.fixture
def halved():
    positions.register(Halved)
    yield {"name": Halved.name, "theta": 500.0}
    positions.unregister(Halved.name)  # the registry as other tests know it


def test_a_scheme_defined_in_a_test_file_trains_one_step_and_evaluates(halved, tmp_path):
    config = tiny(**{"model.position": halved, "stages": [dict(steps=1, seq_len=16, lr=1e-3)],
                     "export_dir": ""})
    summary = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert summary["final_step"] == 1 and jnp.isfinite(summary["loss"])
    from ctxjax.checkpoint import load_for_inference

    cfg, params, _, _ = load_for_inference(str(tmp_path))
    assert cfg.position == Halved(theta=500.0)
    metrics = run_evaluation(cfg, params, "bytes", dict(tasks=("ppl",), lengths=(16, 32), max_documents=4,
                                                        max_windows=2, target_tokens=8),
                             str(tmp_path / "eval"))
    assert jnp.isfinite(metrics["eval/ppl/fixed_target/32"])
    assert os.path.exists(tmp_path / "eval" / "summary.md")
