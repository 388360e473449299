"""Import direction: every `runner` module may import only its own layer or a lower one.

The check reads the source with ast, so it sees imports inside functions and under
TYPE_CHECKING too, which a runtime check of sys.modules would miss.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"

# Longest matching prefix wins; a prefix matches the module itself and its submodules.
LAYERS: dict[str, int] = {
    "runner.errors": 0,
    "runner.logs": 0,
    "runner.script_guard": 0,
    "runner.images": 0,
    "runner.policy": 0,
    "runner.devices": 0,
    "runner.interrupts": 0,
    "runner.prompts": 0,
    "runner.outcomes": 0,
    "runner.models": 0,
    "runner.sample": 0,
    "runner.settings": 1,
    "runner.tasks": 1,
    "runner.cost": 1,
    "runner.store": 2,
    "runner.backends": 3,
    "runner.scheduling": 4,
    "runner.outputs": 5,
    "runner.job": 6,
    "runner.startup": 6,
    "runner.progress": 6,
    "runner.cli": 7,
    "runner.doctor": 7,
    "runner.__main__": 7,
    "runner": 7,  # runner/__init__.py only: the prefix match below is exact for it
}
EMULATOR = "runner.emulator"
# the one module allowed to start the emulator (runs without a key)
EMULATOR_USERS = frozenset({"runner.job"})


@dataclass(frozen=True)
class Arrow:
    file: str
    line: int
    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.source} -> {self.target}"


def _module_name(path: Path) -> tuple[str, bool]:
    """Dotted name of a file under runner/, and whether it is a package __init__."""
    parts = list(path.relative_to(RUNNER.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Runner modules named by one import statement (for `from x import y`, y may be a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = _resolve(node, module, is_package)
    # `from runner.store import journal` imports runner.store.journal; naming the
    # submodule keeps the arrow precise. A plain name just maps to the base's layer.
    return [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def layer_of(module: str) -> int | None:
    if module == "runner":
        return LAYERS["runner"]
    best: str | None = None
    for prefix in LAYERS:
        if prefix == "runner":
            continue
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return None if best is None else LAYERS[best]


def _is_runner(module: str) -> bool:
    return module == "runner" or module.startswith("runner.")


def _in_emulator(module: str) -> bool:
    return module == EMULATOR or module.startswith(EMULATOR + ".")


def _target_module(name: str) -> str:
    """The longest prefix of `name` that is a real module or package under runner/."""
    parts = name.split(".")
    while len(parts) > 1:
        path = RUNNER.parent.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return "runner"


def all_arrows() -> list[Arrow]:
    """Every import of a runner module in runner/, once per (file, line, target)."""
    arrows: dict[Arrow, None] = {}
    for path in sorted(RUNNER.rglob("*.py")):
        module, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(RUNNER.parent))
        for node in ast.walk(tree):
            for name in _imported(node, module, is_package):
                if _is_runner(name):
                    target = _target_module(name)
                    arrows[Arrow(rel, node.lineno, module, target)] = None
    return list(arrows)


def _is_wrong(arrow: Arrow) -> bool:
    source, target = arrow.source, arrow.target
    if _in_emulator(source) or _in_emulator(target):
        if _in_emulator(source) and _in_emulator(target):
            return False
        return not (_in_emulator(target) and source in EMULATOR_USERS)
    source_layer, target_layer = layer_of(source), layer_of(target)
    assert source_layer is not None and target_layer is not None
    return target_layer > source_layer


def test_every_runner_module_has_a_layer() -> None:
    unknown = sorted(
        {
            module
            for module, _ in map(_module_name, RUNNER.rglob("*.py"))
            if not _in_emulator(module) and layer_of(module) is None
        }
    )
    assert not unknown, "modules with no layer in tests/test_layers.py: " + ", ".join(unknown)


def test_imports_point_down() -> None:
    arrows = all_arrows()
    assert arrows, "found no imports at all: the scan is broken"
    wrong = [
        str(arrow)
        for arrow in arrows
        if layer_of(arrow.target) is not None or _in_emulator(arrow.target)
        if layer_of(arrow.source) is not None or _in_emulator(arrow.source)
        if _is_wrong(arrow)
    ]
    assert not wrong, "imports that run upward or cross the emulator line:\n" + "\n".join(wrong)


def test_the_scan_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from runner.job import run_all\n"
        "def f() -> None:\n"
        "    from ..scheduling import lanes\n"
        "    import runner.cli\n"
    )
    tree = ast.parse(source)
    found = [
        name
        for node in ast.walk(tree)
        for name in _imported(node, "runner.store.files", is_package=False)
    ]
    assert "runner.job.run_all" in found
    assert "runner.scheduling.lanes" in found
    assert "runner.cli" in found


def test_the_rules_flag_upward_and_emulator_arrows() -> None:
    def arrow(source: str, target: str) -> Arrow:
        return Arrow("x.py", 1, source, target)

    assert _is_wrong(arrow("runner.settings", "runner.backends.local.config"))
    assert not _is_wrong(arrow("runner.job", "runner.store.journal"))
    assert not _is_wrong(arrow("runner.job", "runner.emulator"))
    assert _is_wrong(arrow("runner.cli", "runner.emulator.server"))
    assert _is_wrong(arrow("runner.emulator.state", "runner.images"))
    assert not _is_wrong(arrow("runner.emulator.app", "runner.emulator.context"))
    assert layer_of("runner.scheduling.lanes") == 4 and layer_of("runner.settingsx") is None
    assert _imported(
        ast.parse("from . import journal").body[0], "runner.store", is_package=True
    ) == ["runner.store.journal"]
