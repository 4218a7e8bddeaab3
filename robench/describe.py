"""What a plugin is, for ``robench ls``: its description, options and declared attributes.

:func:`summary` reads a plugin's docstring and literal class attributes from its source (the
entry point's module, following imports into robench and the plugin's own package) without
importing it, so listing plugins does not import torch; a plugin it cannot read statically is
imported instead. :func:`describe` imports the plugin and documents it in full.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from robench import registry
from robench.options import annotation_text
from robench.spec import format_value

# class attributes a plugin of each kind declares (STYLE 8), with what each means
ATTRIBUTES = {
    "defenses": {
        "stochastic": "the output differs between two calls on one input: scored over draws, attacked with EOT",
        "differentiable": "False: attacks see the gradient of surrogate(x) (BPDA) instead of the defense's",
        "needs_training": "randomly initialised unless given weights=PATH",
        "trainer": "the training recipe `robench train NAME` runs",
        "version": "bumped when outputs change; part of every cell key",
    },
    "attacks": {
        "kind": "white-box, transfer or black-box",
        "norms": "threat-model norms the attack supports",
        "averages_draws": "the attack does its own EOT over a stochastic defense's draws",
        "version": "bumped when outputs change; part of every cell key",
    },
}
LISTED = {"defenses": ("stochastic", "differentiable", "version"), "attacks": ("kind", "norms", "version")}
BASE_CLASSES = {"defenses": ("robench.defense", "Defense"), "attacks": ("robench.attack", "Attack")}
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.(?:\s|$)")  # "et al. 2016" ends none
_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters|Options):\s*$")
_ARG_LINE = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class Summary:
    """One line of ``robench ls``: a plugin's first docstring sentence and its declared attributes."""

    description: str
    attributes: dict[str, Any]

    def attribute_text(self, kind: str) -> str:
        """The attributes ``ls`` lists for this kind, as ``key=value`` words."""
        words = [f"{key}={_plain(self.attributes[key])}" for key in LISTED.get(kind, ()) if key in self.attributes]
        if self.attributes.get("needs_training"):
            words.append("learned: untrained without weights=")
        return " ".join(words)


def summary(kind: str, name: str) -> Summary:
    """Description and attributes of a plugin, read from its source without importing it where possible."""
    record = registry.info(kind, name)
    if kind == "benchmarks":
        return Summary(first_sentence(_benchmark_description(registry.benchmark_path(name))), {})
    module, _, attr = record.value.partition(":")
    found = _static(module.strip(), attr.strip(), kind)
    if found is not None:
        return found
    obj = registry.load(kind, name)
    return Summary(first_sentence(_own_doc(obj)), _declared(kind, obj))


def describe(kind: str, name: str) -> str:
    """A plugin's full documentation: docstring, options with types and defaults, attributes, provider."""
    record = registry.info(kind, name)
    head = f"{name}: {kind[:-1]} {record.value}, provided by {record.provider}"
    if kind == "benchmarks":
        path = registry.benchmark_path(name)
        return "\n\n".join([head, _benchmark_description(path).strip() or "(no description)",
                            f"grid file: {path}\nrun it: robench run {name}"]) + "\n"
    obj = registry.load(kind, name)
    parts = [head, _without_args(_own_doc(obj)) or "(no docstring)"]
    options = options_table(obj)
    flag = {"defenses": "--defense", "attacks": "--attack", "models": "--model", "datasets": "--dataset"}[kind]
    if options is None:
        parts.append("Options: not declared (the plugin takes **kwargs).")
    elif options:
        parts.append(f"Options ({flag} {name}:key=value,...):\n" + _indent(options))
    else:
        parts.append(f"Options: none ({flag} {name}).")
    declared = _declared(kind, obj)
    if declared:
        rows = [[key, _plain(value), ATTRIBUTES[kind][key]] for key, value in declared.items()]
        parts.append("Attributes:\n" + _indent(_table(rows, (None, 40, 60))))
    return "\n\n".join(parts) + "\n"


def options_table(obj: Any) -> str | None:
    """The options a plugin accepts as a table (name, type, default, doc); None when it takes any."""
    options = registry.options_of(obj)
    if options is None:
        return None
    docs = _option_docs(obj)
    rows = [
        [name, annotation_text(p), "(required)" if p.default is p.empty else format_value(p.default), docs.get(name, "")]
        for name, p in options.items()
    ]
    return _table(rows, (None, 20, 20, 60)) if rows else ""


def first_sentence(text: str) -> str:
    """The first sentence of a docstring on one line, whole (never cut mid-word), without its full stop."""
    flat = " ".join(text.split())
    match = _SENTENCE_END.search(flat)
    return flat[: match.start()] if match else flat


# --- reading plugins without importing them ---------------------------------------------------

def _static(module: str, attr: str, kind: str) -> Summary | None:
    """A summary read from source, or None when the object or (for classes) its base class cannot be found."""
    allowed = {"robench", module.split(".")[0]}
    found = _definition(module, attr, allowed) if attr and "." not in attr else None
    if found is None:
        return None
    where, node = found
    if isinstance(node, ast.Assign):  # a factory made by a call, e.g. ``inception_v3 = _backbone(name, doc)``
        doc = _doc_argument(where, node.value, allowed)
        return Summary(first_sentence(doc), {}) if doc is not None and kind not in BASE_CLASSES else None
    doc = ast.get_docstring(node) or ast.get_docstring(_tree(where)) or ""
    if kind not in BASE_CLASSES:
        return Summary(first_sentence(doc), {})
    if not isinstance(node, ast.ClassDef):
        return None
    attributes, unknown, reached = _class_attributes(where, node, allowed)
    if BASE_CLASSES[kind] not in reached or unknown & set(ATTRIBUTES[kind]):
        return None
    return Summary(first_sentence(doc), {k: v for k, v in attributes.items() if k in ATTRIBUTES[kind]})


def _class_attributes(module: str, node: ast.ClassDef, allowed: set[str]):
    """Literal class attributes (inherited ones first), names assigned non-literally, and classes visited."""
    attributes: dict[str, Any] = {}
    unknown: set[str] = set()
    reached = {(module, node.name)}
    for base in reversed(node.bases):  # the first base wins, as in the MRO of a simple hierarchy
        found = _definition(module, base.id, allowed) if isinstance(base, ast.Name) else None
        if found is not None and isinstance(found[1], ast.ClassDef):
            inherited, vague, seen = _class_attributes(*found, allowed)
            attributes.update(inherited)
            unknown = (unknown - set(inherited)) | vague
            reached |= seen
    for statement in node.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value is not None else [])
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            try:
                attributes[target.id] = ast.literal_eval(statement.value)
                unknown.discard(target.id)
            except ValueError:
                attributes.pop(target.id, None)
                unknown.add(target.id)
    return attributes, unknown, reached


def _doc_argument(module: str, call: ast.expr, allowed: set[str]) -> str | None:
    """The string a call passes as the called function's ``doc`` parameter (None when there is none)."""
    if not isinstance(call, ast.Call):
        return None
    value = next((k.value for k in call.keywords if k.arg == "doc"), None)
    maker = _definition(module, call.func.id, allowed) if isinstance(call.func, ast.Name) else None
    if value is None and maker is not None and isinstance(maker[1], ast.FunctionDef):
        parameters = [a.arg for a in (*maker[1].args.posonlyargs, *maker[1].args.args)]
        index = parameters.index("doc") if "doc" in parameters else len(call.args)
        value = call.args[index] if index < len(call.args) else None
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None


def _definition(module: str, name: str, allowed: set[str], depth: int = 0):
    """``(module, node)`` defining ``name`` in ``module`` (class, function or assignment), following imports."""
    tree = _tree(module)
    if tree is None or depth > 8:
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) == name:
                source = _absolute(module, node)
                if source.split(".")[0] in allowed:
                    return _definition(source, alias.name, allowed, depth + 1)
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    path = _module_file(module)
    package = module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module | None:
    path = _module_file(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=None)
def _module_file(module: str) -> Path | None:
    """The source file of a module, found without running it (only its grandparent packages are imported)."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        return Path(origin) if origin and origin.endswith(".py") else None
    parent, _, child = module.rpartition(".")
    try:
        if not parent:
            spec = importlib.util.find_spec(module)
            return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None
        parent_spec = importlib.util.find_spec(parent)  # imports the grandparents, not the parent itself
    except (ImportError, ValueError):
        return None
    for folder in (parent_spec.submodule_search_locations or []) if parent_spec else []:
        for candidate in (Path(folder) / f"{child}.py", Path(folder) / child / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


# --- documenting imported plugins -------------------------------------------------------------

def _declared(kind: str, obj: Any) -> dict[str, Any]:
    return {key: getattr(obj, key) for key in ATTRIBUTES.get(kind, {}) if hasattr(obj, key)}


def _own_doc(obj: Any) -> str:
    """The object's own docstring (not inherited), else its module's."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc:
        doc = getattr(sys.modules.get(getattr(obj, "__module__", "")), "__doc__", None)
    return inspect.cleandoc(doc) if doc else ""


def _option_docs(obj: Any) -> dict[str, str]:
    """Per-option text from the ``Args:`` sections of the docstrings along the class hierarchy."""
    sources: list[Any] = []
    if isinstance(obj, type):
        sources = [c for c in obj.__mro__ if c is not object]
    elif inspect.isfunction(obj):
        returned = registry.returned_class(obj)
        sources = [obj] + ([c for c in returned.__mro__ if c is not object] if returned else [])
    docs: dict[str, str] = {}
    for source in sources:
        for init in (source, source.__dict__.get("__init__") if isinstance(source, type) else None):
            text = init.__dict__.get("__doc__") if isinstance(init, type) else getattr(init, "__doc__", None)
            for name, doc in _arg_docs(text or "").items():
                docs.setdefault(name, doc)
    return docs


def _arg_docs(doc: str) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` section, continuation lines joined."""
    docs: dict[str, str] = {}
    current, indent, inside = None, None, False
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if _ARGS_HEADER.match(stripped):
            current, indent, inside = None, None, True
            continue
        if not inside or not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if level == 0:
            inside = False
            continue
        indent = level if indent is None else indent
        match = _ARG_LINE.match(stripped)
        if level == indent and match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + stripped
    return docs


def _without_args(doc: str) -> str:
    """A docstring without its ``Args:`` section (the options table shows it)."""
    kept, inside = [], False
    for line in doc.splitlines():
        if _ARGS_HEADER.match(line.strip()):
            inside = True
            continue
        if inside and line.strip() and not line[:1].isspace():
            inside = False
        if not inside:
            kept.append(line)
    return "\n".join(kept).strip()


def _benchmark_description(path: Path) -> str:
    import yaml

    data = yaml.safe_load(path.read_text())
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def _plain(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def wrap(text: str, width: int | None) -> str:
    """Lines of at most ``width`` characters (None: one line), broken between words only."""
    if width is None:
        return text
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def _table(rows: list[list[str]], widths: tuple) -> str:
    from tabulate import tabulate

    wrapped = [[wrap(cell, width) for cell, width in zip(row, widths)] for row in rows]
    return tabulate(wrapped, tablefmt="plain", disable_numparse=True)


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())
