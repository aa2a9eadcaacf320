"""The exported API documents its arguments: every public function, and every public method of an exported
class (constructor included, in the class docstring), has a numpydoc ``Parameters`` section that lists
exactly its signature's parameters (``*args`` / ``**kwargs`` written so), a default stated there
(``default X`` / ``default=X``) is the signature's, and one that returns a value has a ``Returns`` (or
``Yields``) section: ``help()`` is what a reader of a notebook sees.

The API walked: ``latentinv.__all__`` and the ``__all__`` of the modules that the README tells users to
import from, of ``latentinv.inversion`` (the engine's parts: ``LatentProblem``, ``TorchGenerator``, the
paper's equations, ``InversionResult``) and of ``latentinv.inversion.posterior`` (``PosteriorResult``,
what ``LatentSampler.sample`` returns, and ``split_rhat``): :data:`MODULES`. A dataclass's private
fields (``_diagnostics``) are not API. A small parser; no numpydoc dependency.
"""
import ast
import dataclasses
import functools
import importlib
import inspect
import re
import textwrap

import pytest

import latentinv

MODULES = ("latentinv.metrics", "latentinv.operators.checks", "latentinv.plotting", "latentinv.datasets", "latentinv.baselines",
           "latentinv.inversion", "latentinv.inversion.posterior")


def _public_methods(cls):
    """(name, function, drops_first) of the public methods defined in latentinv, inherited ones included."""
    out = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, (staticmethod, classmethod)):
            func, drop = raw.__func__, isinstance(raw, classmethod)
        elif inspect.isfunction(raw):
            func, drop = raw, True
        else:                   # properties, attributes
            continue
        if getattr(func, "__module__", "").startswith("latentinv"):
            out.append((name, func, drop))
    return out


def _targets():
    """(qualified name, docstring, signature without self/cls, function or None) of every documented
    callable of the API."""
    out = []

    def add_class(qual, cls):
        init = inspect.getattr_static(cls, "__init__")
        if dataclasses.is_dataclass(cls):       # made by the library: its public fields are the Attributes
            doc = inspect.getdoc(cls).replace("Attributes\n----------", "Parameters\n----------")
            sig = inspect.signature(cls)
            sig = sig.replace(parameters=[p for p in sig.parameters.values() if not p.name.startswith("_")])
            out.append((qual, doc, sig, None))
        elif inspect.isfunction(init) and init.__module__.startswith("latentinv"):
            sig = inspect.signature(init)
            sig = sig.replace(parameters=list(sig.parameters.values())[1:])
            out.append((qual, inspect.getdoc(cls), sig, None))
        for name, func, drop in _public_methods(cls):
            sig = inspect.signature(func)
            if drop:
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])
            out.append((f"{qual}.{name}", inspect.getdoc(getattr(cls, name)), sig, func))

    exported = [getattr(latentinv, name) for name in latentinv.__all__]
    for name in latentinv.__all__:
        obj = getattr(latentinv, name)
        if inspect.isclass(obj):
            add_class(name, obj)
        elif inspect.isfunction(obj):
            out.append((name, inspect.getdoc(obj), inspect.signature(obj), obj))
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            qual = f"{modname}.{name}"
            home = getattr(obj, "__module__", "") or ""
            if not (home == modname or home.startswith(modname + ".")) or any(obj is o for o in exported):
                continue            # re-exported from elsewhere in the API: walked there
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                add_class(qual, obj)
            elif inspect.isfunction(obj):
                out.append((qual, inspect.getdoc(obj), inspect.signature(obj), obj))
    return out


def _sections(doc):
    """{header: [lines]} of a dedented numpydoc docstring."""
    lines = doc.splitlines()
    sections, current = {}, None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.strip() and not line[0].isspace() \
                and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            current = line.strip()
            sections[current] = []
        elif current is not None and not re.fullmatch(r"-{3,}", line.strip()):
            sections[current].append(line)
    return sections


def _entries(lines):
    """[(name, type spec, names of its line)] of a Parameters section: the unindented lines ``name : type``
    or ``a, b : type``."""
    out = []
    for line in lines:
        if not line.strip() or line[0].isspace():
            continue
        names, _, spec = line.partition(" : ")
        group = tuple(n.strip() for n in names.split(","))
        out += [(name, spec.strip(), group) for name in group]
    return out


def _signature_names(sig):
    prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [prefix.get(p.kind, "") + p.name for p in sig.parameters.values()]


_DEFAULT = re.compile(r"\bdefault(?:\s*[=:]\s*|\s+(?:is\s+)?)(.+?)\.?$")


def _stated_default(spec):
    """The literal default a type spec states, or ``inspect.Parameter.empty`` (none, or not a literal)."""
    match = _DEFAULT.search(spec)
    if not match:
        return inspect.Parameter.empty
    text = match.group(1).strip()
    if text.endswith(")") and text.count(")") > text.count("("):     # "(default None)": the spec's parenthesis
        text = text[:-1].rstrip()
    text = text.strip("`")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return inspect.Parameter.empty


@functools.lru_cache(maxsize=None)
def _module_tree(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read())


def _returns_value(func):
    """Whether the function's own body (not a nested one) returns a value or yields."""
    func = inspect.unwrap(func)
    code = func.__code__
    node = next((n for n in ast.walk(_module_tree(code.co_filename))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func.__name__
                 and min([n.lineno] + [d.lineno for d in n.decorator_list]) == code.co_firstlineno), None)
    if node is None:
        return False
    stack = list(ast.iter_child_nodes(node))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None \
                and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _problems(doc, sig, func):
    if not doc:
        return ["no docstring"]
    sections = _sections(doc)
    problems = []
    names = _signature_names(sig)
    if names or "Parameters" in sections:
        entries = _entries(sections.get("Parameters", []))
        documented = [n for n, _, _ in entries]
        if "Parameters" not in sections:
            problems.append(f"no Parameters section for {names}")
        elif documented != names:
            problems.append(f"Parameters {documented} != signature {names}")
        for name, spec, group in entries:
            stated = _stated_default(spec)
            param = sig.parameters.get(name.lstrip("*"))
            if stated is inspect.Parameter.empty or param is None:
                continue
            if len(group) > 1 and isinstance(stated, tuple) and len(stated) == len(group):     # vmin, vmax
                stated = stated[group.index(name)]
            actual = param.default
            if actual is inspect.Parameter.empty:
                problems.append(f"{name}: documented default {stated!r}, the signature has none")
            elif not (stated == actual and isinstance(stated, bool) == isinstance(actual, bool)):
                problems.append(f"{name}: documented default {stated!r}, the signature's {actual!r}")
    if func is not None and _returns_value(func) and not {"Returns", "Yields"} & set(sections):
        problems.append("returns a value but has no Returns section")
    return problems


TARGETS = _targets()


def test_the_api_is_walked():
    names = {qual for qual, *_ in TARGETS}
    assert {"Grid2D", "Grid2D.to_image", "LatentInverter.score", "LatentSampler.sample", "VAEPrior.transform",
            "SGANPrior.to", "paper_crosshole", "latentinv.plotting.plot_samples",
            "latentinv.metrics.model_rmse", "latentinv.datasets.PatchSampler.sample",
            "latentinv.inversion.LatentProblem", "latentinv.inversion.LatentProblem.data_loss",
            "latentinv.inversion.TorchGenerator.decode", "latentinv.inversion.chi_mean",
            "latentinv.inversion.ring_gradient", "latentinv.inversion.InversionResult.concatenate",
            "latentinv.inversion.posterior.PosteriorResult", "latentinv.inversion.posterior.PosteriorResult.ess",
            "latentinv.inversion.posterior.split_rhat"} <= names
    assert "LatentInverter.fit" in names and "latentinv.inversion.LatentInverter.fit" not in names     # once
    assert len(TARGETS) > 140


@pytest.mark.parametrize("qual, doc, sig, func", TARGETS, ids=[t[0] for t in TARGETS])
def test_parameters_and_returns_are_documented(qual, doc, sig, func):
    assert not _problems(doc, sig, func), qual


def test_the_parser():
    doc = textwrap.dedent("""\
        Summary.

        Parameters
        ----------
        a, b : int
            Two.
        c : float, default 0.5
            Three.
        **params
            The rest.

        Returns
        -------
        int
        """)

    def f(a, b, c=0.5, **params):
        return 1

    assert _entries(_sections(doc)["Parameters"]) == [("a", "int", ("a", "b")), ("b", "int", ("a", "b")),
                                                      ("c", "float, default 0.5", ("c",)),
                                                      ("**params", "", ("**params",))]
    assert _problems(doc, inspect.signature(f), f) == []

    def g(a, b, c=0.25, *args):
        return None

    assert _problems(doc, inspect.signature(g), g) == [
        "Parameters ['a', 'b', 'c', '**params'] != signature ['a', 'b', 'c', '*args']",
        "c: documented default 0.5, the signature's 0.25"]
    assert _problems("Summary.", inspect.signature(f), f) == [
        "no Parameters section for ['a', 'b', 'c', '**params']", "returns a value but has no Returns section"]
    assert _stated_default('str, default="auto"') == "auto"
    assert _stated_default("bool, default ``True``.") is True
    assert _stated_default("int or None, optional (default None)") is None
    assert _stated_default("callable, default paper_crosshole()") is inspect.Parameter.empty
    assert _stated_default("int, default is 3") == 3
    # a tuple keeps its closing parenthesis (it lost it, so a tuple default was never checked)
    assert _stated_default("tuple of int, default=(0, 1, 2)") == (0, 1, 2)
    assert _stated_default("tuple, optional (default (0, 1)).") == (0, 1)


def test_the_parser_is_strict_on_names_order_and_booleans():
    """A name line without the space before its colon, parameters in another order than the signature's, a
    default of True documented for a default of 1, and a wrong one of a pair's defaults are problems."""
    def f(a, b=1):
        pass

    def doc(*entries):
        return "Summary.\n\nParameters\n----------\n" + "".join(f"{e}\n    Text.\n" for e in entries)

    assert _problems(doc("a : int", "b : int, default 1"), inspect.signature(f), f) == []
    assert _problems(doc("a: int", "b : int, default 1"), inspect.signature(f), f) == [
        "Parameters ['a: int', 'b'] != signature ['a', 'b']"]
    assert _problems(doc("b : int, default 1", "a : int"), inspect.signature(f), f) == [
        "Parameters ['b', 'a'] != signature ['a', 'b']"]
    assert _problems(doc("a : int", "b : bool, default True"), inspect.signature(f), f) == [
        "b: documented default True, the signature's 1"]

    def g(lo=0.0, hi=2.0):
        pass

    assert _problems(doc("lo, hi : float, default (0, 2)"), inspect.signature(g), g) == []     # vmin, vmax
    assert _problems(doc("lo, hi : float, default (0, 1)"), inspect.signature(g), g) == [
        "hi: documented default 1, the signature's 2.0"]


def test_what_counts_as_returning_a_value():
    """A bare ``return``, ``return None`` and a nested function's ``return`` return nothing; a decorated
    function is found in its module's source; a generator needs Returns or Yields."""
    nodoc = "Summary.\n\nParameters\n----------\nx : int\n    Text.\n"

    def bare(x):
        if x:
            return
        if x is None:
            return None

        def inner():
            return 1
        inner()

    @functools.lru_cache(maxsize=None)
    def cached(x):
        return x

    def gen(x):
        yield x

    assert _problems(nodoc, inspect.signature(bare), bare) == []
    assert _problems(nodoc, inspect.signature(cached), cached) == ["returns a value but has no Returns section"]
    assert _problems(nodoc, inspect.signature(gen), gen) == ["returns a value but has no Returns section"]
    assert _problems(nodoc + "\nYields\n------\nint\n    Text.\n", inspect.signature(gen), gen) == []
