"""The package's layers, read from its modules' imports: none runs back up, and there is no import cycle.

reference -> functional -> distributed -> nn -> method / registry / convert -> explain -> lab -> cli (the package root
``normlab/__init__.py`` is the facade over all of them and may be imported anywhere only for ``__version__``).
"""

import ast
from pathlib import Path

import normlab

ROOT = Path(normlab.__file__).parent
LAYERS = {
    "_checks": 0,
    "reference": 0,
    "functional": 1,
    "distributed": 2,
    "nn": 3,
    "method": 4,
    "registry": 4,
    "convert": 4,
    "converters": 4,
    "ecosystem": 4,
    "transform": 5,
    "auditor": 5,
    "explain": 5,
    "precision": 5,
    "lab": 6,
    "cli": 7,
}


# what each part of the lab may import besides itself
LAB_BASE = {"config", "metrics", "store"}
LAB_MAY_IMPORT = {
    "base": set(),
    "training": {"base"},
    "sweep": {"base", "training"},
    "judging": {"base", "training"},
    "studies": {"base", "training", "judging"},
    "user_study": {"base", "training", "judging"},
    "facade": {"base", "training", "sweep", "judging", "studies", "user_study"},
}


def _lab_part(module: str) -> str | None:
    """The lab part a module of normlab.lab belongs to (None outside the lab, or for an unknown folder)."""
    parts = module.split(".")
    if parts[:2] != ["normlab", "lab"]:
        return None
    if len(parts) == 2:
        return "facade"
    return "base" if parts[2] in LAB_BASE else parts[2] if parts[2] in LAB_MAY_IMPORT else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[tuple[str, tuple[str, ...]]]:
    """(module imported, names taken from it) for every normlab import in the file, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "normlab":
                found.add((target, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            found |= {(a.name, ()) for a in node.names if a.name.split(".")[0] == "normlab"}
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        edges = set()
        for target, names in _imports(path):
            # "from normlab.lab import studies" names a submodule: the edge goes to it
            subs = {
                f"{target}.{n}"
                for n in names
                if (ROOT.parent / f"{target}.{n}".replace(".", "/")).exists()
                or (ROOT.parent / (f"{target}.{n}".replace(".", "/") + ".py")).exists()
            }
            edges |= subs or {target}
        graph[_module_name(path)] = edges
    return graph


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in _graph() if m != "normlab"), [m for m in _graph() if _layer(m) is None]


def test_every_lab_module_has_a_part():
    lab = [m for m in _graph() if m.startswith("normlab.lab")]
    assert len(lab) > 20 and all(_lab_part(m) is not None for m in lab), [m for m in lab if _lab_part(m) is None]


def test_lab_top_level_stays_small():
    """The lab's top level is its facade, its base modules and its folders: a new module goes in a folder."""
    top = sorted(p.name for p in (ROOT / "lab").glob("*.py"))
    assert top == ["__init__.py", "config.py", "metrics.py", "store.py"], top


def test_no_lab_import_crosses_its_parts():
    wrong = []
    for path in (ROOT / "lab").rglob("*.py"):
        module = _module_name(path)
        part = _lab_part(module)
        for target, _ in _imports(path):
            other = _lab_part(target)
            if other is not None and other != part and other not in LAB_MAY_IMPORT[part]:
                wrong.append(f"{module} ({part}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_import_runs_back_up():
    wrong = []
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        if module == "normlab":
            continue
        for target, names in _imports(path):
            targets = [target]
            if target == "normlab":  # "from .. import nn" takes a submodule; anything else must be __version__
                targets = [f"normlab.{n}" for n in names if n in LAYERS]
                if set(names) - set(LAYERS) - {"__version__"}:
                    wrong.append(f"{module} imports {names} from the package root")
            for t in targets:
                if _layer(t) is not None and _layer(t) > _layer(module):
                    wrong.append(f"{module} (layer {_layer(module)}) imports {t} (layer {_layer(t)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == "normlab" or nxt not in graph:
                continue
            if state.get(nxt) == 1 and not _is_package_of(nxt, node):
                cycle.extend(trail + [node, nxt])
                return True
            if nxt not in state and visit(nxt, trail + [node]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if node not in state and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)


def _is_package_of(package: str, module: str) -> bool:
    """A module importing its own package (its siblings, through ``__init__``) is not a cycle of code."""
    return module.startswith(package + ".")
