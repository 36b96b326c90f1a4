"""The package's shape: model files import no dataset, training or I/O code, and no module imports itself back."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "videodit"
MODEL_FILES = ["attention", "patchify", "dit", "vae", "vae_wan", "text_encoder", "flow"]


def imports() -> dict[str, set[str]]:
    """module -> the videodit modules it imports (at the top or inside functions)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("videodit"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("videodit"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package's __init__ is not a cycle
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(d):] + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_model_files_import_no_data_training_or_io_code():
    graph = imports()
    for name in MODEL_FILES:
        module = f"videodit.{name}"
        bad = {d for d in graph[module] if d.split(".")[1] in ("data", "train", "eval", "generate", "video_io",
                                                               "checkpoint", "cli")}
        assert not bad, f"{module} imports {sorted(bad)}"
        source = (PKG / f"{name}.py").read_text()
        for banned in ("torch.distributed", "import deepspeed", "import wandb", "autocast(", ".cuda()"):
            assert banned not in source, f"{module} uses {banned}"
