"""The documentation cannot drift from the code.

Checked in README.md, bench/README.md and docs/*.md (docs/results/ holds
generated tables, not prose, and is left out):

1. Every ```python block runs, in a fresh namespace per block, in order
   within a file (a block may use the names of the blocks above it in the
   same file), with fit()'s progress lines captured. Two markers, on the
   line just before the opening fence, change that (documented in
   docs/contributing.md):
     <!-- not-run: reason -->   the block is not run (keep these few);
     <!-- signatures -->        the block lists signatures, `name(params)`
                                in Python `def` syntax: each is checked
                                against the real function (below), not run.
2. Every `lsskernels.X`, `lss.X` and `torch.ops.lsskernels.X` name resolves.
3. Every call or signature written inline as `name(...)` for a name of the
   package (the ops, make_index, `layer.*` / `LSSLinear.*`, `index.*`,
   `torch.ops.lsskernels.*`, dotted `lsskernels.*` functions) matches the
   function: in `def` syntax (`f(a, b, *, c=1)`) the parameters must be the
   function's, in order and of the same kind; written as a call
   (`f(x, k=5)`, `f(...)`) its keywords must be parameters of the function
   and its positional arguments no more than it takes.
4. Every repository path named in the docs (`lsskernels/...`, `csrc/...`,
   `bench/...`, `tests/...`, `tools/...`, `docs/...`, relative links) exists;
   `<op>`-style placeholders, `*` and the example op `foo` of
   docs/contributing.md match any name, `{a,b}` expands.
5. The version has one source, `lsskernels/__init__.py`'s `__version__`,
   which pyproject.toml reads, and the docs state the same one.
"""
from __future__ import annotations

import ast
import contextlib
import glob
import importlib
import importlib.util
import inspect
import io
import itertools
import os
import re
import sys

import pytest
import torch

import lsskernels
from lsskernels import _ops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = ["README.md", "bench/README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^( *)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(not-run|signatures)\s*(?::\s*(.*?))?\s*-->\s*$")


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def blocks(path: str):
    """(language, marker, marker reason, first line number, code) of every fenced block."""
    lines = read(path).splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2)
        prev = lines[i - 1] if i else ""
        mark = MARKER.match(prev)
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        out.append((lang, mark.group(1) if mark else None, (mark.group(2) or "") if mark else "", start + 1,
                    "\n".join(body)))
    return out


def prose(path: str) -> str:
    """The text outside fenced blocks."""
    keep, inside = [], False
    for line in read(path).splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            keep.append(line)
    return "\n".join(keep)


def spans(path: str):
    """Inline code spans of the prose."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose(path)) if "\n\n" not in s]


# ----------------------------------------------------------- 1. snippets
PYTHON_BLOCKS = [(path, line, mark, reason, code) for path in DOCS
                 for lang, mark, reason, line, code in blocks(path) if lang == "python"]


def test_markers_have_reasons():
    for path, line, mark, reason, _ in PYTHON_BLOCKS:
        if mark == "not-run":
            assert reason, f"{path}:{line}: `<!-- not-run: reason -->` needs its reason"


@pytest.mark.parametrize("path", sorted({p for p, _, mark, _, _ in PYTHON_BLOCKS if mark is None}))
def test_python_blocks_run(path):
    namespace = {"__name__": f"doc:{path}"}
    torch.manual_seed(0)
    for block_path, line, mark, _, code in PYTHON_BLOCKS:
        if block_path != path or mark is not None:
            continue
        try:
            compiled = compile(code, f"{path}:{line}", "exec")
        except SyntaxError as e:
            pytest.fail(f"{path}:{line}: the block is not Python ({e}); mark it <!-- not-run: reason --> "
                        f"if it is not meant to run")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compiled, namespace)


# ----------------------------------------------------------- 2. names
NAME = re.compile(r"(?<![\w.])(torch\.ops\.lsskernels|lsskernels|lss)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def resolve(dotted: str):
    """The object lsskernels.<dotted>, importing submodules as needed; raises
    LookupError if there is none."""
    obj, module = lsskernels, "lsskernels"
    for part in dotted.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif inspect.ismodule(obj) and importlib.util.find_spec(f"{module}.{part}") is not None:
            obj = importlib.import_module(f"{module}.{part}")
        else:
            raise LookupError(f"lsskernels.{dotted}: no {part!r} in {getattr(obj, '__name__', obj)!r}")
        if inspect.ismodule(obj):
            module = obj.__name__
    return obj


def torch_op_names():
    return set(_ops.kernel_op_names()) | set(_ops.composite_op_names())


def mentioned_names():
    out = []
    for path in DOCS:
        text = read(path)
        for m in NAME.finditer(text):
            if m.group(2) in ("md", "py"):  # a file name (lss.md), not a name
                continue
            out.append((path, m.group(1), m.group(2)))
    return out


def test_named_objects_exist():
    missing = []
    for path, prefix, dotted in mentioned_names():
        if prefix == "torch.ops.lsskernels":
            op = dotted.split(".")[0]
            if op not in torch_op_names():
                missing.append(f"{path}: torch.ops.lsskernels.{dotted}")
            elif lsskernels.extension_loaded() and not hasattr(torch.ops.lsskernels, op):
                missing.append(f"{path}: torch.ops.lsskernels.{dotted} (not registered by the extension)")
            continue
        if dotted.startswith("_C.") and not lsskernels.extension_loaded():
            continue
        try:
            resolve(dotted)
        except LookupError as e:
            missing.append(f"{path}: {e}")
        except ImportError as e:  # a module of the package that needs an optional dependency (triton)
            if not (e.name or "").split(".")[0] or e.name.startswith("lsskernels"):
                raise
    assert not missing, "names in the docs that the package does not have:\n" + "\n".join(sorted(set(missing)))


# ----------------------------------------------------------- 3. calls and signatures
def _callee(name: str):
    """The function a dotted name in the docs stands for, or None when it is
    not one of the package's (then it is not checked)."""
    from lsskernels.partition.index import PartitionIndex
    from lsskernels.layer import LSSLinear

    parts = name.split(".")
    if parts[:3] == ["torch", "ops", "lsskernels"] and len(parts) == 4:
        return ("op", parts[3]) if parts[3] in torch_op_names() else None
    if parts[0] in ("lss", "lsskernels"):
        parts = parts[1:]
        try:
            obj = resolve(".".join(parts))
        except LookupError:
            return None
        return obj if callable(obj) else None
    if parts[0] in ("layer", "LSSLinear") and len(parts) == 2:
        return getattr(LSSLinear, parts[1], None)
    if parts[0] == "index" and len(parts) == 2:
        return getattr(PartitionIndex, parts[1], None)
    if len(parts) == 1 and (parts[0] in lsskernels.__all__ or parts[0] == "make_index"):
        from lsskernels import families

        return getattr(lsskernels, parts[0], None) or getattr(families, parts[0])
    return None


def _real_params(fn):
    """[(name, kind)] of a function, self and *args / **kwargs left out."""
    if isinstance(fn, tuple):  # a torch.ops.lsskernels schema
        if not lsskernels.extension_loaded():
            return None
        schema = getattr(torch.ops.lsskernels, fn[1]).default._schema
        return [(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in schema.arguments]
    if inspect.isclass(fn):
        fn = fn.__init__
    try:
        params = list(inspect.signature(fn).parameters.values())
    except ValueError:  # a pybind11 function: no signature to check against
        return None
    return [(p.name, p.kind) for p in params if p.name != "self"]


CALL = re.compile(r"((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\(")


def _calls(text: str):
    """(name, argument text) of every `name(...)` in text, parentheses balanced."""
    for m in CALL.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            yield m.group(1), " ".join(text[m.end(): i - 1].split()), m.start()


def check_call(name: str, args: str) -> str:
    """'' if `name(args)` agrees with the function, else what is wrong."""
    fn = _callee(name)
    if fn is None:
        return ""
    real = _real_params(fn)
    if real is None:
        return ""
    names = [n for n, _ in real]
    positional = [n for n, k in real if k in (inspect.Parameter.POSITIONAL_ONLY,
                                              inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    keyword_only = {n for n, k in real if k == inspect.Parameter.KEYWORD_ONLY}
    var_kw = any(k == inspect.Parameter.VAR_KEYWORD for _, k in real)
    var_pos = any(k == inspect.Parameter.VAR_POSITIONAL for _, k in real)
    if isinstance(fn, tuple):
        # a schema: documented arguments after `*` are keyword-only in no schema of ours
        keyword_only = set()
    try:
        sig = ast.parse(f"def f({args}): pass").body[0].args
    except SyntaxError:
        sig = None
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError:
        call = None
    if sig is not None and (call is None or sig.vararg or sig.kwarg or sig.kwonlyargs):
        # A signature: its parameters are the function's, in order, of the same kind.
        doc_pos = [a.arg for a in sig.posonlyargs + sig.args]
        doc_kw = [a.arg for a in sig.kwonlyargs]
        errors = []
        if doc_pos != positional[: len(doc_pos)]:
            errors.append(f"positional parameters {doc_pos}, the function's are {positional}")
        for n in doc_kw:
            if n not in keyword_only:
                errors.append(f"{n!r} documented keyword-only, the function's keyword-only are {sorted(keyword_only)}")
        if sig.kwarg is not None and not var_kw:
            errors.append(f"**{sig.kwarg.arg} documented, the function takes no **kwargs")
        required = [n for n, k, d in real_with_defaults(fn) if d and n not in doc_pos + doc_kw]
        if required and sig.kwarg is None:
            errors.append(f"required parameters {required} not documented")
        return "; ".join(errors)
    if call is None:
        return f"neither a call nor a signature in Python syntax: {name}({args})"
    # A call: keywords are parameters; positional arguments no more than it
    # takes, and those written as bare names are named as the parameters.
    errors = []
    for kw in call.keywords:
        if kw.arg is not None and kw.arg not in names and not var_kw:
            errors.append(f"keyword {kw.arg!r} is not a parameter (the function's: {names})")
    pos = [a for a in call.args if not isinstance(a, ast.Starred)]
    ellipsis = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in pos)
    if not ellipsis and not var_pos and len(pos) > len(positional):
        errors.append(f"{len(pos)} positional arguments, the function takes {len(positional)} ({positional})")
    if not ellipsis and not var_pos:
        for arg, param in zip(pos, positional):
            if isinstance(arg, ast.Name) and arg.id != param:
                errors.append(f"argument {arg.id!r} where the parameter is {param!r} (write parameters by name)")
    return "; ".join(errors)


def real_with_defaults(fn):
    """[(name, kind, required)] of a function (self left out)."""
    if isinstance(fn, tuple):
        return []
    target = fn.__init__ if inspect.isclass(fn) else fn
    return [(p.name, p.kind, p.default is inspect.Parameter.empty
             and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
            for p in inspect.signature(target).parameters.values() if p.name != "self"]


def documented_calls():
    """(path, name, args) of inline `name(...)` spans and of signature blocks."""
    out = []
    for path in DOCS:
        for span in spans(path):
            for name, args, start in _calls(span):
                if start == 0:
                    out.append((path, name, args))
        for lang, mark, _, line, code in blocks(path):
            if lang == "python" and mark == "signatures":
                for name, args, start in _calls(code):
                    if start == 0 or code[start - 1] == "\n":
                        out.append((f"{path}:{line}", name, args))
    return out


def test_documented_calls_match_signatures():
    wrong = [f"{path}: `{name}({args})`: {err}" for path, name, args in documented_calls()
             if (err := check_call(name, args))]
    assert not wrong, "calls or signatures in the docs that the functions do not accept:\n" + "\n".join(wrong)


def test_signature_blocks_cover_something():
    for path, line, mark, _, code in PYTHON_BLOCKS:
        if mark == "signatures":
            checked = [n for n, a, s in _calls(code) if _callee(n) is not None]
            assert checked, f"{path}:{line}: a signatures block with no signature of the package"


# ----------------------------------------------------------- 4. paths
TOP = ("lsskernels", "csrc", "bench", "tests", "tools", "docs", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./{},<>*+-]*[\w}>*])" % "|".join(re.escape(t) for t in TOP))
FILES = ("setup.py", "pyproject.toml", "CMakeLists.txt", "Makefile", "README.md")
# Outputs of a run, not files of the repository.
GENERATED = ("bench/results/", "build/", "docs/results/gpu-check")


def expand(path: str):
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return list(itertools.chain.from_iterable(expand(path[: m.start()] + alt + path[m.end():])
                                              for alt in m.group(1).split(",")))


def exists(path: str) -> bool:
    pattern = re.sub(r"<[^<>]*>", "*", path)
    pattern = re.sub(r"(?<![A-Za-z])foo(?![A-Za-z])", "*", pattern)
    if any(c in pattern for c in "*?["):
        return bool(glob.glob(os.path.join(ROOT, pattern)))
    return os.path.exists(os.path.join(ROOT, pattern))


def mentioned_paths():
    out = []
    for path in DOCS:
        text = read(path)
        for m in PATH.finditer(text):
            raw = m.group(1).rstrip(".,")
            if raw.startswith(GENERATED) or raw.endswith("/") or raw.endswith("/."):
                continue
            out.append((path, raw))
        links = re.sub(r"`[^`\n]+`", "", prose(path))
        for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", links):  # relative links
            target = m.group(1)
            if "://" not in target and not target.startswith("mailto:"):
                out.append((path, os.path.normpath(os.path.join(os.path.dirname(path), target))))
        for m in re.finditer(r"(?<![\w/.-])(%s)(?![\w])" % "|".join(re.escape(f) for f in FILES), text):
            out.append((path, m.group(1)))
    return out


def test_paths_exist():
    missing = sorted({f"{doc}: {p}" for doc, p in mentioned_paths() if not all(exists(e) for e in expand(p))})
    assert not missing, "paths in the docs that the repository does not have:\n" + "\n".join(missing)


# ----------------------------------------------------------- 5. version
def test_one_version():
    from setuptools.config.expand import read_attr

    version = lsskernels.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    pyproject = read("pyproject.toml")
    def table(name):
        m = re.search(r"^\[%s\]\n(.*?)(?=^\[|\Z)" % re.escape(name), pyproject, re.M | re.S)
        return m.group(1) if m else ""

    project = table("project")
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M), "pyproject.toml: version must be dynamic"
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml's [project] states a version of its own"
    attr = re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"([\w.]+)"\s*\}', table("tool.setuptools.dynamic"), re.M)
    assert attr and attr.group(1) == "lsskernels.__version__", "pyproject.toml must read lsskernels.__version__"
    # What setuptools will read (statically, without importing the package).
    assert read_attr(attr.group(1), root_dir=ROOT) == version
    stated = []
    for path in DOCS:
        stated += [(path, v) for v in re.findall(r"\blsskernels (?:version )?v?(\d+\.\d+\.\d+)\b", read(path))]
        stated += [(path, v) for v in re.findall(r"\bversion (\d+\.\d+\.\d+)\b", read(path))]
    assert ("README.md", version) in stated, f"README.md must state the version ({version})"
    wrong = [f"{p}: {v}" for p, v in stated if v != version]
    assert not wrong, f"versions other than {version} stated as the current one:\n" + "\n".join(wrong)
