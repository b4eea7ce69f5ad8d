"""The package's shape: no module over 500 lines, no import circle.

Read from the source files with ``ast`` (nothing is imported), so these
run in well under a second and on no backend.

Every ``import`` statement counts, those inside functions too: a deferred
import hides a circle from Python's import machinery but not from a
reader, who still has to read both modules to understand either. Two
things are not edges: importing a module does not count as importing the
packages above it (``keras_segformer.convert.hf`` does not make its
importer depend on ``keras_segformer/convert/__init__.py``; a package that
imports its own modules would otherwise always be a circle), and names
from outside ``keras_segformer`` are left out.

One deliberate exception, listed in ``CALLED_UPWARD``: the model classes'
``save_pretrained`` / ``save_to_preset`` methods (``models/hub_io.py``)
call the converters, which build models, inside the method: a lower layer
reaching the one above only when called. Such an edge must stay inside a
function: the test fails on a top-level one.
"""

import ast
import os

import keras_segformer

PACKAGE = os.path.dirname(os.path.abspath(keras_segformer.__file__))
MAX_LINES = 500
# (importer, imported): imports inside a method that reach the layer above
# on purpose (see the module docstring).
CALLED_UPWARD = {
    ("keras_segformer.models.hub_io", "keras_segformer.convert.to_hf"),
    ("keras_segformer.models.hub_io", "keras_segformer.convert.to_keras_hub"),
}


def _modules():
    """``{dotted module name: file path}`` for every module of the
    package (a package is named by its ``__init__.py``)."""
    root = os.path.dirname(PACKAGE)
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, root)[: -len(".py")]
            dotted = dotted.replace(os.sep, ".")
            found[dotted.removesuffix(".__init__")] = path
    return found


def _imported(node, module, is_package, modules):
    """The package modules an ``Import`` / ``ImportFrom`` node reads:
    ``import a.b`` reads ``a.b``; ``from a import b, c`` reads the module
    ``a.b`` where there is one, and ``a`` for a name ``c`` defined there.
    A name outside the package stands for the nearest module above it
    (and for nothing outside ``modules``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            parts = module.split(".")
            if not is_package:
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names]
        if any(name not in modules for name in names):
            names.append(base)
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph(modules=None, top_level_only=False):
    """``{module: set of package modules it imports}`` (see the module
    docstring for what counts); ``top_level_only``: the imports outside
    functions only."""
    modules = _modules() if modules is None else modules
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        graph[module] = set()
        nodes = list(ast.walk(tree))
        if top_level_only:
            inside = {
                id(inner)
                for node in nodes
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                for inner in ast.walk(node)
            }
            nodes = [node for node in nodes if id(node) not in inside]
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(node, module, is_package, modules)
    return graph


def circles(graph):
    """The import circles of ``graph``: its strongly connected components
    of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_module_is_over_500_lines():
    long = {}
    for path in _modules().values():
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long[os.path.relpath(path, os.path.dirname(PACKAGE))] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_no_import_circle_in_the_package():
    graph = import_graph()
    top_level = import_graph(top_level_only=True)
    for importer, imported in CALLED_UPWARD:
        assert imported not in top_level.get(importer, ()), (
            f"{importer} imports {imported} at the top of the module"
        )
        graph.get(importer, set()).discard(imported)
    found = circles(graph)
    assert not found, (
        "import circles (move the shared name to a module both can "
        f"import): {found}"
    )


def test_the_checks_find_what_they_look_for(tmp_path):
    # A circle through a deferred relative import, a chain that is no
    # circle, and a package importing its own module: the check can fail.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import f\n")
    (package / "a.py").write_text("from pkg import b\n\ndef f():\n    pass\n")
    (package / "b.py").write_text(
        "import os\n\ndef g():\n    from .c import h\n    return h\n"
    )
    (package / "c.py").write_text("from pkg.a import f\n")
    (package / "d.py").write_text("from pkg.c import h\n")
    modules = {
        ("pkg." + p.stem).removesuffix(".__init__"): str(p)
        for p in package.iterdir()
    }
    graph = import_graph(modules)
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert import_graph(modules, top_level_only=True)["pkg.b"] == set()
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
