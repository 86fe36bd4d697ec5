"""Extract TensorRT's Python API names from its pybind11 binding sources at one git tag.

    git clone https://github.com/NVIDIA/TensorRT   (or any clone / mirror with the tags)
    python scripts/trt_api_names.py --git-dir TensorRT/.git --tag v10.3.0 \
        --out tests/runtime/backends/trt_api/tensorrt-10.3.0.json
    python scripts/trt_api_names.py --git-dir TensorRT/.git --tag v10.3.0 --variant lean \
        --out tests/runtime/backends/trt_api/tensorrt_lean-10.3.0.json

--variant: "full" (the tensorrt module) or "lean" (the lean and dispatch modules, the same
sources built without EXPORT_ALL_BINDINGS, TensorRT >= 8.6). The sources are read as the C
preprocessor would for that variant: code under ``#if EXPORT_ALL_BINDINGS`` is kept only for
"full" (its ``#else`` branch only for "lean"), and for "lean" only the files whose bind
function python/src/pyTensorRT.cpp still calls are read.

Reads python/src/infer/*.cpp, python/src/parsers/pyOnnx.cpp and the package's
__init__.py (pure-Python names such as ``__version__`` and ``nptype``) at the tag,
and writes JSON: for every bound class or enum, the names pybind11 gives it
(``.def``, ``.def_static``, ``.def_property*``, ``.def_readonly``/``readwrite``,
enum ``.value``; ``export_values()`` copies an enum's values into its scope), its
bound base classes, and the module-level names (classes, enums, ``m.def``,
``m.attr``). The tests look the runner's and the build's names up in these lists
(tests/runtime/backends/test_tensorrt.py, tests/ddpm_export/export/test_tensorrt_build.py).
It is a reader of pybind11 code as NVIDIA writes it, not a C++ parser: a name bound
some other way would be missing, and the tests would then fail, never pass wrongly.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from typing import Dict, List, Set

SOURCES = ("python/src/infer/", "python/src/parsers/pyOnnx.cpp")
INIT_FILES = ("python/packaging/bindings_wheel/tensorrt/__init__.py",  # 8.6 and later
              "python/packaging/tensorrt/__init__.py")  # 8.5
_HEAD = re.compile(r'py::(class_|enum_)\s*<(?P<targs>.*?)>\s*(?P<var>\w+)?\s*[({]\s*'
                   r'(?P<scope>\w+)\s*,\s*"(?P<name>\w+)"', re.S)
_MEMBER = re.compile(r'\.(def|def_static|def_property|def_property_readonly|def_readonly|'
                     r'def_readwrite|def_readonly_static|value)\s*\(\s*"(?P<name>\w+)"')
_BRACE_INIT = re.compile(r"py::(class_|enum_)\s*<.*>\s*\w+\s*$", re.S)
_VAR_STMT = re.compile(r'^\s*(?P<var>\w+)\s*\.(def|value|export_values)')
_MODULE = re.compile(r'\bm\s*\.\s*(def|attr)\s*\(\s*"(?P<name>\w+)"')


def statements(code: str) -> List[str]:
    """Statements: split at ';' and at block braces, never inside (), [] (a lambda's body in a
    .def(...) call stays in its statement), strings or comments."""
    out, stack, start, i, n = [], [], 0, 0, len(code)
    while i < n:
        ch = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
            continue
        if code.startswith("/*", i):
            j = code.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if code.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', code[i:])
            if m:
                end = code.find(")" + m.group(1) + '"', i)
                i = n if end < 0 else end + len(m.group(1)) + 2
                continue
        if ch in "\"'":
            j = i + 1
            while j < n and code[j] != ch:
                j += 2 if code[j] == "\\" else 1
            i = j + 1
            continue
        in_block = all(c == "{" for c in stack)  # not inside a call's parentheses
        if ch in "({[":
            if ch == "{" and _BRACE_INIT.search(code[start:i]):
                stack.append("b")  # py::class_<...> var{m, "Name", ...}: an initializer
            else:
                if ch == "{" and in_block:
                    out.append(code[start:i])
                    start = i + 1
                stack.append(ch)
        elif ch in ")}]":
            popped = stack.pop() if stack else ""
            if ch == "}" and popped != "b" and all(c == "{" for c in stack):
                out.append(code[start:i])
                start = i + 1
        elif ch == ";" and in_block:
            out.append(code[start:i])
            start = i + 1
        i += 1
    out.append(code[start:])
    return [st for st in out if st.strip()]


_GUARD = re.compile(r"^\s*#\s*if\s+(?P<neg>!?)\s*EXPORT_ALL_BINDINGS\b")


def preprocess(code: str, full: bool) -> str:
    """code with the EXPORT_ALL_BINDINGS branches of the other variant removed (other
    preprocessor conditionals are kept whole, both branches)."""
    out, stack = [], []  # stack: None for other #if, else whether the guarded branch is kept
    for line in code.splitlines(keepends=True):
        d = line.strip()
        m = _GUARD.match(line)
        if m:
            stack.append(full if not m.group("neg") else not full)
            continue
        if d.startswith("#if"):
            stack.append(None)
        elif d.startswith("#else") and stack and stack[-1] is not None:
            stack[-1] = not stack[-1]
            continue
        elif d.startswith("#endif") and stack:
            if stack.pop() is not None:
                continue
        if all(k is not False for k in stack):
            out.append(line)
    return "".join(out)


def lean_files(files: Dict[str, str], top: str) -> Dict[str, str]:
    """The sources whose bind function the lean build of pyTensorRT.cpp still calls."""
    called = set(re.findall(r"\b(bind\w+)\s*\(\s*m\s*\)", preprocess(top, full=False)))
    keep = {}
    for path, code in files.items():
        defined = set(re.findall(r"\bvoid\s+(bind\w+)\s*\(", code))
        if defined & called:
            keep[path] = code
    return keep


def _cpp_name(targs: str) -> str:
    return re.split(r"[,<]", targs, 1)[0].strip()


def _top_level_args(targs: str) -> List[str]:
    args, depth, cur = [], 0, ""
    for ch in targs:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return args


def extract(files: Dict[str, str], init_py: str) -> Dict[str, object]:
    classes: Dict[str, Set[str]] = {"": set()}
    cpp_to_py: Dict[str, str] = {}
    template_args: Dict[str, List[str]] = {}
    var_to_py: Dict[str, str] = {"m": ""}
    for path in sorted(files):
        code = files[path]
        for st in statements(code):
            for m in _MODULE.finditer(st):
                if not _HEAD.search(st) or st.find("m.") < _HEAD.search(st).start():
                    classes[""].add(m.group("name"))
            heads = list(_HEAD.finditer(st))
            if heads:
                # one statement may hold several bindings (rare); members follow their head
                for k, h in enumerate(heads):
                    name, scope = h.group("name"), h.group("scope")
                    end = heads[k + 1].start() if k + 1 < len(heads) else len(st)
                    body = st[h.end():end]
                    members = classes.setdefault(name, set())
                    members.update(m.group("name") for m in _MEMBER.finditer(body))
                    args = _top_level_args(h.group("targs"))
                    cpp_to_py[args[0]] = name
                    template_args[name] = args[1:]
                    if h.group("var"):
                        var_to_py[h.group("var")] = name
                    owner = var_to_py.get(scope, scope)
                    classes.setdefault(owner, set()).add(name)
                    if "export_values" in body:
                        classes[owner].update(m.group("name") for m in _MEMBER.finditer(body)
                                              if m.group(1) == "value")
                continue
            vm = _VAR_STMT.match(st)
            if vm and vm.group("var") in var_to_py and vm.group("var") != "m":
                owner = var_to_py[vm.group("var")]
                classes.setdefault(owner, set()).update(m.group("name") for m in _MEMBER.finditer(st))
    bases = {name: sorted(cpp_to_py[a] for a in args if a in cpp_to_py)
             for name, args in template_args.items()}
    for m in re.finditer(r"^def (\w+)\(", init_py, re.M):
        classes[""].add(m.group(1))
    if re.search(r"^__version__\s*=", init_py, re.M):
        classes[""].add("__version__")
    return {"classes": {k: sorted(v) for k, v in sorted(classes.items())},
            "bases": {k: v for k, v in sorted(bases.items()) if v}}


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True,
                          text=True).stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--git-dir", required=True, help="a TensorRT clone's .git (or a bare mirror)")
    ap.add_argument("--tag", required=True, help="e.g. 8.5.3, v8.6.1, v10.3.0 (see 'git tag')")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--variant", choices=("full", "lean"), default="full",
                    help="full: the tensorrt module; lean: tensorrt_lean / tensorrt_dispatch")
    args = ap.parse_args(argv)
    listing = _git(args.git_dir, "ls-tree", "-r", "--name-only", args.tag, "python/").split()
    paths = [p for p in listing if p.endswith(".cpp") and any(p.startswith(s) for s in SOURCES)]
    if not paths:
        print(f"no binding sources under {SOURCES} at {args.tag}", file=sys.stderr)
        return 1
    files = {p: _git(args.git_dir, "show", f"{args.tag}:{p}") for p in paths}
    if not any("EXPORT_ALL_BINDINGS" in code for code in files.values()) and args.variant == "lean":
        print(f"{args.tag} has no lean bindings (EXPORT_ALL_BINDINGS appears from 8.6)", file=sys.stderr)
        return 1
    full = args.variant == "full"
    files = {p: preprocess(code, full) for p, code in files.items()}
    if not full:
        files = lean_files(files, _git(args.git_dir, "show", f"{args.tag}:python/src/pyTensorRT.cpp"))
    init = next((p for p in INIT_FILES if p in listing), None)
    init_py = _git(args.git_dir, "show", f"{args.tag}:{init}") if init else ""
    commit = _git(args.git_dir, "rev-list", "-n", "1", args.tag).strip()
    result = {"source": {"repository": "https://github.com/NVIDIA/TensorRT", "tag": args.tag,
                         "commit": commit, "variant": args.variant,
                         "files": sorted(files) + ([init] if init else []),
                         "generated_by": "scripts/trt_api_names.py"}}
    result.update(extract(files, init_py))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    n = sum(len(v) for v in result["classes"].values())
    print(f"wrote {args.out}: {len(result['classes'])} scopes, {n} names from {args.tag} ({commit[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
