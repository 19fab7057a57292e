"""The Colab notebooks stay in step with the code. Both are saved without outputs, and every Python line
compiles and imports names that exist. The quickstart needs a network and is not executed.
extend_hf_model.ipynb is, cell by cell in one namespace, with its settings cell replaced by tiny settings: a
random Llama built here, the standard library's source as data, two steps at 128 tokens, a plan for a v5e-1
under a small memory limit. Its install cell (tagged colab-setup: shell and magic lines) is Colab's; the test
starts in the repository, where that cell leaves a Colab user."""

import ast
import importlib
import importlib.util
import json
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
QUICKSTART = os.path.join(ROOT, "colab", "ctxjax_quickstart.ipynb")
EXTEND = os.path.join(ROOT, "colab", "extend_hf_model.ipynb")
SETUP_TAG = "colab-setup"


def code_cells(path):
    return [c for c in json.load(open(path))["cells"] if c["cell_type"] == "code"]


def tags(cell) -> list[str]:
    return cell["metadata"].get("tags", [])


def python_lines(cell) -> str:
    """A cell's source without its shell (!) and magic (%) lines, which are Colab's, not Python."""
    return "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))


@pytest.mark.parametrize("path", [QUICKSTART, EXTEND], ids=os.path.basename)
def test_notebook_is_saved_clean_and_its_ctxjax_imports_exist(path):
    cells = code_cells(path)
    assert cells
    for cell in cells:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, "save without outputs"
        for node in ast.walk(ast.parse(python_lines(cell))):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("ctxjax"):
                module = importlib.import_module(node.module)
                for alias in node.names:  # a name the module defines, or one of its submodules
                    name = f"{node.module}.{alias.name}"
                    assert hasattr(module, alias.name) or importlib.util.find_spec(name), name


def tiny_llama(out: str) -> str:
    """A random 2-layer LlamaForCausalLM with 64 tokens of context and a byte-level BPE tokenizer (as SmolLM's
    and GPT-2's), trained here on two standard-library files and the passkey prompt's sentences (so that a
    prompt fits in 128 tokens)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxjax.data import retrieval_text as passkey

    texts = [open(os.path.join(os.path.dirname(os.__file__), name)).read() for name in ("os.py", "random.py")]
    texts += [" ".join((passkey.PASSKEY_INTRO, *passkey.FILLER, passkey.PASSKEY_SENTENCE,
                        passkey.PASSKEY_QUESTION))] * 100
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    os.makedirs(out)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>"}, f)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0,
        eos_token_id=0)).save_pretrained(out)
    return out


def assigned_names(source: str) -> list[str]:
    return [target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets]


def test_extend_notebook_runs_end_to_end_with_tiny_settings(tmp_path, libtpu, monkeypatch):
    work = tmp_path / "work"
    tiny = {
        "MODEL": tiny_llama(str(tmp_path / "llama")), "WORK": str(work),
        # A step of one row of 128 tokens takes 3.4 MiB on a v5e, of 256 tokens 4.0 MiB (libtpu 0.0.42.1): the
        # plan settles on 128 after two compiles, short of FACTOR x 64.
        "TOPOLOGY": "v5e-1", "MEMORY_LIMIT_GIB": 3.7 / 1024, "FACTOR": 4,
        "CONFIG": "configs/llama_extend.py:tiny", "OVERRIDES": [], "TRAIN_SOURCE": "stdlib",
        "EVAL_SOURCE": "stdlib:eval", "TOKENS_PER_STEP": 128, "STEPS": 2, "LR": 1e-3,
        "EVAL_OPTIONS": ["--max-documents", "8", "--max-windows", "2", "--target-tokens", "16",
                         "--trials", "1", "--depths", "0.5", "--ppl-methods", "fixed_target"],
    }
    cells = code_cells(EXTEND)
    (settings,) = [c for c in cells if "parameters" in tags(c)]
    assert assigned_names("".join(settings["source"])) == list(tiny)  # the test sets every setting
    settings["source"] = [f"{name} = {value!r}\n" for name, value in tiny.items()]
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the notebook adds CPU flags
    namespace = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        if SETUP_TAG in tags(cell):
            continue
        source = "".join(cell["source"])
        assert python_lines(cell) == source, f"code cell {index} has shell or magic lines; tag it {SETUP_TAG}"
        exec(compile(source, f"{EXTEND} code cell {index}", "exec"), namespace)

    assert (namespace["longest"], namespace["train_len"], namespace["factor"]) == (128, 128, 2)
    for out in namespace["eval_dirs"].values():
        results = json.load(open(os.path.join(out, "results.json")))
        assert results["lengths"] == [32, 64, 128] and results["passkey"]["cells"]
    exported = json.load(open(work / "hf" / "config.json"))
    assert exported["rope_scaling"]["rope_type"] == "yarn" and exported["max_position_embeddings"] == 128
