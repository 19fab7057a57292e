"""The Colab notebook stays in step with the code: valid JSON, and every Python line it runs compiles and
imports names that exist (the notebook itself needs a network, so it is not executed here)."""

import ast
import importlib
import json
import os

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "colab", "ctxjax_quickstart.ipynb")


def test_notebook_code_compiles_and_its_ctxjax_imports_exist():
    cells = [c for c in json.load(open(NOTEBOOK))["cells"] if c["cell_type"] == "code"]
    assert cells
    for cell in cells:
        # Shell (!) and magic (%) lines are Colab's, not Python.
        source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("ctxjax"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
