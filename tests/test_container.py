"""The container image (Dockerfile, .dockerignore, docker-bake.hcl), checked without a
Docker engine.

The Dockerfile is parsed and its stages checked instruction by instruction. The bake file
is evaluated by `docker buildx bake --print` when buildx is installed, and otherwise by
python-hcl2's parser and the small evaluator below. The evaluator supports only the
functions the bake file uses and rejects any other construct.

The image tests rebuild the final stage's environment outside Docker, as the Dockerfile
builds it: the build context filtered by .dockerignore, the files the builder stage
copies, a wheel, a virtual environment without pip and the `fast` extra. They then run
`stratus serve`, `stratus push` and the HEALTHCHECK command as uid 10001, the image's
USER. They install packages from the machine's pip index and take about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import httpx
import pytest
from lark import Token, Tree

from support.layouts import LayoutSpec, generate_layout
from support.processes import ToolError, child_environment, run_tool

REPOSITORY = Path(__file__).resolve().parent.parent
DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
BAKE_FILE = REPOSITORY / "docker-bake.hcl"

SLIM_PYTHON_BASE = re.compile(r"python:(?P<version>3\.\d+)-slim(-[a-z]+)?")
IMAGE_UID = 10001
IMAGE_GID = 10001
PLATFORMS = ["linux/amd64", "linux/arm64"]
PIP_TIMEOUT = 300.0


def _project_version() -> str:
    with open(REPOSITORY / "pyproject.toml", "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


# ---------------------------------------------------------------- Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def find(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def find_one(self, keyword: str) -> Instruction:
        found = self.find(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage from {self.base}, found {len(found)}"
        return found[0]

    def arguments_by_name(self) -> dict[str, str]:
        """Return the ARG defaults of this stage (an ARG without a default maps to "")."""
        values: dict[str, str] = {}
        for instruction in self.find("ARG"):
            name, _, default = shlex.split(instruction.arguments)[0].partition("=")
            values[name] = default
        return values

    def environment(self) -> dict[str, str]:
        """Return the ENV values in effect at the end of this stage, unexpanded."""
        values: dict[str, str] = {}
        for instruction in self.find("ENV"):
            values.update(parse_key_values(instruction.arguments))
        return values


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continuation lines.

    Comment lines (parser directives included) and blank lines are skipped, also inside a
    continued instruction. Heredocs are not supported.
    """
    instructions: list[Instruction] = []
    pending = ""
    start_line = 0
    for number, raw_line in enumerate(text.splitlines(), start=1):
        stripped = raw_line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start_line = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        assert "<<" not in arguments, f"line {start_line}: heredocs are not supported by this parser"
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start_line))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def split_stages(instructions: Sequence[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for index, instruction in enumerate(instructions):
        if instruction.keyword != "FROM":
            continue
        words = instruction.arguments.split()
        words = [word for word in words if not word.startswith("--")]
        name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
        following = instructions[index + 1:]
        end = next((position for position, next_instruction in enumerate(following)
                    if next_instruction.keyword == "FROM"), len(following))
        stages.append(Stage(words[0], name, tuple(following[:end])))
    return stages


def parse_key_values(arguments: str) -> dict[str, str]:
    """Parse the `KEY=VALUE ...` form of ENV, LABEL and ARG, removing shell quotes."""
    values: dict[str, str] = {}
    for word in shlex.split(arguments):
        name, separator, value = word.partition("=")
        assert separator, f"{word!r} is not in the KEY=VALUE form"
        values[name] = value
    return values


def parse_exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), (
        f"{arguments!r} is not the exec (JSON array) form"
    )
    return value


def split_flags(arguments: str) -> tuple[dict[str, str], list[str]]:
    """Split `--name=value` flags (as in COPY and HEALTHCHECK) from the other words."""
    flags: dict[str, str] = {}
    words = shlex.split(arguments)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def expand_variables(text: str, values: Mapping[str, str]) -> str:
    """Replace `$NAME` and `${NAME}` as Dockerfile ENV does. An unknown name becomes ""."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda match: values.get(match[1] or match[2], ""), text)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final_stage(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder_stage(stages: list[Stage], final_stage: Stage) -> Stage:
    sources = {flags["from"] for flags, _ in _copies(final_stage) if "from" in flags}
    assert len(sources) == 1, f"the final stage should copy from one stage, not {sorted(sources)}"
    (source,) = sources
    return next(stage for stage in stages if stage.name == source)


def _copies(stage: Stage) -> list[tuple[dict[str, str], list[str]]]:
    return [split_flags(instruction.arguments) for instruction in stage.find("COPY")]


def _venv_path(final_stage: Stage) -> str:
    (_, paths), = _copies(final_stage)
    return paths[-1]


def _python_version(final_stage: Stage) -> str:
    match = SLIM_PYTHON_BASE.fullmatch(final_stage.base)
    assert match is not None, f"{final_stage.base} is not a slim Python image"
    return match["version"]


def test_parse_dockerfile_joins_continuations() -> None:
    text = "# syntax=docker/dockerfile:1\nFROM a AS b\n\nRUN one \\\n    # a comment\n    two\nCMD [\"x\"]\n"
    assert parse_dockerfile(text) == [
        Instruction("FROM", "a AS b", 2),
        Instruction("RUN", "one two", 4),
        Instruction("CMD", '["x"]', 7),
    ]


def test_dockerfile_stages_share_slim_base(stages: list[Stage], builder_stage: Stage, final_stage: Stage) -> None:
    assert len(stages) >= 2
    assert final_stage.name is None
    assert SLIM_PYTHON_BASE.fullmatch(builder_stage.base), builder_stage.base
    # The venv's python is a link to the base image's interpreter, so the bases must match.
    assert final_stage.base == builder_stage.base


def test_final_stage_runs_serve_as_non_root(final_stage: Stage) -> None:
    user = final_stage.find_one("USER").arguments
    uid, _, gid = user.partition(":")
    assert uid == str(IMAGE_UID)
    assert gid == str(IMAGE_GID)
    assert final_stage.find_one("EXPOSE").arguments.split() == ["3000"]

    entrypoint = parse_exec_form(final_stage.find_one("ENTRYPOINT").arguments)
    command = parse_exec_form(final_stage.find_one("CMD").arguments)
    assert entrypoint + command == ["stratus", "serve"]
    # `docker run IMAGE push ...` replaces only CMD, so ENTRYPOINT must be the stratus command.
    assert entrypoint == ["stratus"]


def test_final_stage_has_no_build_tools(final_stage: Stage) -> None:
    forbidden = re.compile(r"\b(apt-get|apt|apk|gcc|cc|make|build-essential|pip|pip3|wheel|python -m build)\b")
    for instruction in final_stage.instructions:
        if instruction.keyword == "RUN":
            assert not forbidden.search(instruction.arguments), f"line {instruction.line}: {instruction.arguments}"
    assert not final_stage.find("ADD")


def test_final_stage_copies_only_venv(final_stage: Stage, builder_stage: Stage) -> None:
    copies = _copies(final_stage)
    assert len(copies) == 1
    (flags, paths), = copies
    assert flags == {"from": builder_stage.name}
    assert paths[0] == paths[1]
    venv = paths[0]

    builder_commands = " ".join(instruction.arguments for instruction in builder_stage.find("RUN"))
    assert f"python -m venv --without-pip {venv}" in builder_commands
    assert f"--python {venv}/bin/python install" in builder_commands
    assert "[fast]" in builder_commands
    assert f"{venv}/bin" in final_stage.environment()["PATH"].split(":")


def test_data_directory_is_user_volume(final_stage: Stage) -> None:
    data_directory = final_stage.environment()["STRATUS_DATA_DIR"]
    volume = final_stage.find_one("VOLUME")
    assert volume.arguments == data_directory

    # The directory is created with the image user as owner before VOLUME, so a new named
    # volume starts with that owner.
    creating = [instruction for instruction in final_stage.find("RUN") if data_directory in instruction.arguments]
    assert len(creating) == 1
    assert f"install -d -o {IMAGE_UID} -g {IMAGE_GID} -m 0750 {data_directory}" in creating[0].arguments
    assert f"--uid {IMAGE_UID} --gid {IMAGE_GID}" in creating[0].arguments
    assert creating[0].line < volume.line


def test_labels_carry_version_argument(stages: list[Stage], final_stage: Stage) -> None:
    labels: dict[str, str] = {}
    for instruction in final_stage.find("LABEL"):
        labels.update(parse_key_values(instruction.arguments))
    assert labels.pop("org.opencontainers.image.description")
    assert labels == {
        "org.opencontainers.image.title": "stratus",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": "${VERSION}",
        "org.opencontainers.image.source": "${SOURCE}",
    }

    arguments = final_stage.arguments_by_name()
    assert arguments["VERSION"] == _project_version()
    assert arguments["SOURCE"] == ""
    for stage in stages:
        if "VERSION" in stage.arguments_by_name():
            assert stage.arguments_by_name()["VERSION"] == _project_version(), stage.base

    # A changed build argument invalidates the cache of every RUN after its ARG.
    version_line = next(instruction.line for instruction in final_stage.find("ARG")
                        if instruction.arguments.startswith("VERSION"))
    assert all(instruction.line < version_line for instruction in final_stage.find("RUN"))


def test_healthcheck_requests_healthz(final_stage: Stage) -> None:
    flags, _ = split_flags(final_stage.find_one("HEALTHCHECK").arguments.partition(" CMD ")[0])
    assert set(flags) <= {"interval", "timeout", "start-period", "start-interval", "retries"}
    command = _healthcheck_command(final_stage)
    assert command[0] == "python"
    assert "/healthz" in command[-1]


def _healthcheck_command(final_stage: Stage) -> list[str]:
    _, separator, command = final_stage.find_one("HEALTHCHECK").arguments.partition(" CMD ")
    assert separator, "HEALTHCHECK has no CMD"
    return parse_exec_form(command)


# ---------------------------------------------------------------- .dockerignore


def read_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """Return (negated, regex) pairs for the patterns of a .dockerignore file.

    The translation follows moby's patternmatcher (github.com/moby/patternmatcher):
    `*` and `?` stay inside one path component, and `**` spans any number of them.
    """
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for line in path.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip().strip("/")
        patterns.append((negated, re.compile(_glob_to_regex(pattern))))
    return patterns


def _glob_to_regex(pattern: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):
                index += 1
            parts.append(".*" if index == len(pattern) else "(?:.*/)?")
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            assert pattern[index] not in "[\\", f"{pattern!r}: character classes and escapes are not supported here"
            parts.append(re.escape(pattern[index]))
            index += 1
    return "".join(parts)


def is_excluded(relative_path: str, patterns: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Return True when the build context leaves out this path (relative, with `/`).

    As in moby, a pattern that matches a parent directory applies to everything in it, and
    the last pattern that applies wins.
    """
    components = relative_path.split("/")
    prefixes = ["/".join(components[:count]) for count in range(1, len(components) + 1)]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_only_build_inputs() -> None:
    patterns = read_dockerignore(DOCKERIGNORE)
    for kept in ("pyproject.toml", "README.md", "stratus/cli.py", "stratus/registry/app.py", "stratus/py.typed"):
        assert not is_excluded(kept, patterns), kept
    for left_out in (
        ".git/HEAD", "tests/test_container.py", "benchmarks/common.py", ".venv/bin/python",
        "venv/pyvenv.cfg", "stratus/__pycache__/cli.cpython-311.pyc", "stratus/registry/__pycache__/app.pyc",
        ".pytest_cache/README.md", ".hypothesis/constants/x", "stratus.egg-info/PKG-INFO", "build/lib/x.py",
        "dist/stratus-0.1.0.whl", "stratus-data/library/alpine/index.json", "Dockerfile", ".ci/run",
    ):
        assert is_excluded(left_out, patterns), left_out


def test_dockerignore_keeps_builder_copies(builder_stage: Stage) -> None:
    patterns = read_dockerignore(DOCKERIGNORE)
    for flags, paths in _copies(builder_stage):
        assert "from" not in flags
        for source in paths[:-1]:
            assert (REPOSITORY / source).exists(), source
            assert not is_excluded(source, patterns), source


# ---------------------------------------------------------------- docker-bake.hcl


class BakeError(Exception):
    """The bake file could not be evaluated (for example, a version regex() rejects)."""


class HclEvaluator:
    """An evaluator of docker-bake.hcl over python-hcl2's parse tree, with bake's meaning
    for the expressions that file contains.

    Supported: string literals without templates, numbers, tuples, objects, variables,
    indexing, user functions and the cty functions formatlist (with %s only), join and
    regex. Anything else raises AssertionError, so that a new construct in the bake file
    fails this test instead of being evaluated wrongly.
    """

    def __init__(self, text: str) -> None:
        self.variables: dict[str, Tree] = {}
        self.functions: dict[str, tuple[list[str], Tree]] = {}
        self.targets: dict[str, dict[str, Tree]] = {}
        self.groups: dict[str, dict[str, Tree]] = {}
        body = _tree_children(hcl2.parses_to_tree(text))[0]
        for block in _tree_children(body):
            assert block.data == "block", f"unexpected top-level {block.data}"
            kind_node, label_node, block_body = _tree_children(block)
            kind, label = _identifier(kind_node), self._literal(label_node)
            attributes: dict[str, Tree] = {}
            for attribute in _tree_children(block_body):
                name_node, value_node = _tree_children(attribute)
                attributes[_identifier(name_node)] = value_node

            if kind == "variable":
                self.variables[label] = attributes["default"]
            elif kind == "function":
                # params is a tuple of bare names: expr_term > tuple > expr_term > identifier.
                (params_tuple,) = _tree_children(attributes["params"])
                params = [_identifier(_tree_children(item)[0]) for item in _tree_children(params_tuple)]
                self.functions[label] = (params, attributes["result"])
            elif kind == "target":
                self.targets[label] = attributes
            elif kind == "group":
                self.groups[label] = attributes
            else:
                raise AssertionError(f"unsupported block {kind}")

    def definition(self, environ: Mapping[str, str]) -> dict[str, Any]:
        """Return what `docker buildx bake --print` prints for the default group.

        A variable is read from `environ` under its own name, as bake does.
        """
        scope = {name: environ.get(name, self.evaluate(default, {})) for name, default in self.variables.items()}
        groups = {name: {key: self.evaluate(node, scope) for key, node in attributes.items()}
                  for name, attributes in self.groups.items()}
        targets = {name: {key: self.evaluate(node, scope) for key, node in self.targets[name].items()}
                   for name in groups["default"]["targets"]}
        return {"group": {"default": groups["default"]}, "target": targets}

    def evaluate(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        kind = node.data
        children = _tree_children(node)
        if kind == "expr_term":
            assert len(children) == 1, f"unsupported expression with {len(children)} parts"
            return self.evaluate(children[0], scope)
        if kind == "string":
            return self._literal(node)
        if kind == "int_lit":
            return int(node.children[0])
        if kind == "identifier":
            name = _identifier(node)
            assert name in scope, f"{name} is not defined here"
            return scope[name]
        if kind == "tuple":
            return [self.evaluate(child, scope) for child in children]
        if kind == "object":
            return dict(self._object_element(element, scope) for element in children)
        if kind == "index_expr_term":
            collection, index = children
            return self.evaluate(collection, scope)[self.evaluate(_tree_children(index)[0], scope)]
        if kind == "function_call":
            name = _identifier(children[0])
            arguments = [self.evaluate(argument, scope) for argument in _tree_children(children[1])] \
                if len(children) > 1 else []
            return self._call(name, arguments)
        raise AssertionError(f"unsupported HCL expression {kind}")

    def _object_element(self, element: Tree, scope: Mapping[str, Any]) -> tuple[str, Any]:
        key_node, value_node = _tree_children(element)
        (key_term,) = _tree_children(key_node)
        (key,) = _tree_children(key_term)
        # A bare word as an object key is the key itself, not a variable.
        key_text = _identifier(key) if key.data == "identifier" else self._literal(key)
        return key_text, self.evaluate(value_node, scope)

    def _call(self, name: str, arguments: list[Any]) -> Any:
        if name in self.functions:
            params, result = self.functions[name]
            assert len(arguments) == len(params), f"{name} takes {len(params)} arguments"
            return self.evaluate(result, dict(zip(params, arguments)))
        if name == "formatlist":
            return _formatlist(arguments[0], arguments[1:])
        if name == "join":
            separator, *lists = arguments
            assert lists, "join needs at least one list"
            return separator.join(item for items in lists for item in items)
        if name == "regex":
            return _regex(*arguments)
        raise AssertionError(f"function {name} is not supported by this evaluator")

    @staticmethod
    def _literal(node: Tree) -> str:
        assert node.data == "string", f"expected a string, found {node.data}"
        parts: list[str] = []
        for child in _tree_children(node):
            (part,) = child.children
            assert child.data == "string_part" and isinstance(part, Token), "string templates are not supported"
            parts.append(_unescape(str(part)))
        return "".join(parts)


def _tree_children(node: Tree) -> list[Tree]:
    return [child for child in node.children
            if isinstance(child, Tree) and child.data != "new_line_or_comment"]


def _identifier(node: Tree) -> str:
    assert node.data == "identifier", f"expected an identifier, found {node.data}"
    token = node.children[0]
    assert isinstance(token, Token)
    return str(token)


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escape = match[1]
        if escape[0] in "uU":
            return chr(int(escape[1:], 16))
        assert escape in _ESCAPES, f"unknown escape \\{escape}"
        return _ESCAPES[escape]

    text = re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", replace, text)
    return text.replace("$${", "${").replace("%%{", "%{")


def _formatlist(template: str, arguments: list[Any]) -> list[str]:
    lengths = {len(argument) for argument in arguments if isinstance(argument, list)}
    assert len(lengths) == 1, "formatlist needs list arguments of one length"
    (length,) = lengths
    rows = [[argument[row] if isinstance(argument, list) else argument for argument in arguments]
            for row in range(length)]
    return [_format(template, row) for row in rows]


def _format(template: str, values: list[Any]) -> str:
    remaining = list(values)

    def replace(match: re.Match[str]) -> str:
        if match[1] == "%":
            return "%"
        assert match[1] == "s", f"format verb %{match[1]} is not supported by this evaluator"
        assert remaining, "format has too few arguments"
        value = remaining.pop(0)
        assert isinstance(value, str)
        return value

    result = re.sub(r"%(.)", replace, template)
    assert not remaining, "format has more arguments than verbs"
    return result


def _regex(pattern: str, text: str) -> Any:
    # cty's regex() uses the first match. Without groups it returns the matched text, and
    # with unnamed groups the list of their values.
    match = re.search(pattern, text)
    if match is None:
        raise BakeError(f"regex {pattern!r} does not match {text!r}")
    assert not match.re.groupindex, "named groups are not supported by this evaluator"
    return list(match.groups()) if match.re.groups else match[0]


def test_hcl_evaluator_rejects_unknown_constructs() -> None:
    template = 'variable "V" {{\n  default = "1"\n}}\ngroup "default" {{\n  targets = ["t"]\n}}\n' \
               'target "t" {{\n  tags = {expression}\n}}\n'
    evaluated = HclEvaluator(template.format(expression='[join("-", ["a\\\\b", V])]')).definition({})
    assert evaluated["target"]["t"]["tags"] == ["a\\b-1"]
    for expression in ('[upper(V)]', '["${V}"]', '[for v in [V] : v]', 'V == "1" ? [V] : []'):
        with pytest.raises(AssertionError):
            HclEvaluator(template.format(expression=expression)).definition({})


def buildx_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        run_tool(["docker", "buildx", "version"], timeout=30)
    except ToolError:
        return False
    return True


def bake_with_buildx(environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        completed = run_tool(["docker", "buildx", "bake", "--file", str(BAKE_FILE), "--print"],
                             timeout=60, environment=child_environment(environ))
    except ToolError as error:
        raise BakeError(str(error)) from error
    definition: dict[str, Any] = json.loads(completed.stdout)
    return definition


def bake_with_hcl2(environ: Mapping[str, str]) -> dict[str, Any]:
    return HclEvaluator(BAKE_FILE.read_text()).definition(environ)


@pytest.fixture(params=["buildx", "hcl2"])
def bake(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """Return `bake(**variables)`, the bake definition of the default group."""
    if request.param == "buildx" and not buildx_available():
        pytest.skip("docker buildx is not installed; the bake file is checked with python-hcl2 instead")
    evaluate = bake_with_buildx if request.param == "buildx" else bake_with_hcl2

    def bake_definition(**variables: str) -> dict[str, Any]:
        return evaluate(variables)

    return bake_definition


def _target(definition: dict[str, Any]) -> dict[str, Any]:
    assert definition["group"]["default"]["targets"] == ["stratus"]
    target: dict[str, Any] = definition["target"]["stratus"]
    return target


def test_bake_tags_release_version(bake: Callable[..., dict[str, Any]]) -> None:
    target = _target(bake(VERSION="2.1.2"))
    assert target["tags"] == [
        "docker.io/stratus/stratus:2.1.2",
        "docker.io/stratus/stratus:2.1",
        "docker.io/stratus/stratus:2",
        "docker.io/stratus/stratus:latest",
    ]
    assert target["args"]["VERSION"] == "2.1.2"
    assert target["labels"]["org.opencontainers.image.version"] == "2.1.2"


def test_bake_tags_multi_digit_version(bake: Callable[..., dict[str, Any]]) -> None:
    target = _target(bake(VERSION="10.20.30", REGISTRY="ghcr.io", IMAGE="example/registry"))
    assert target["tags"] == [
        "ghcr.io/example/registry:10.20.30",
        "ghcr.io/example/registry:10.20",
        "ghcr.io/example/registry:10",
        "ghcr.io/example/registry:latest",
    ]


def test_bake_registry_and_image_change_tags(bake: Callable[..., dict[str, Any]]) -> None:
    target = _target(bake(VERSION="2.1.2", REGISTRY="registry.example:5000", IMAGE="team/stratus"))
    assert target["tags"] == [
        "registry.example:5000/team/stratus:2.1.2",
        "registry.example:5000/team/stratus:2.1",
        "registry.example:5000/team/stratus:2",
        "registry.example:5000/team/stratus:latest",
    ]


def test_bake_defaults_match_pyproject(bake: Callable[..., dict[str, Any]]) -> None:
    version = _project_version()
    target = _target(bake())
    assert target["tags"][0] == f"docker.io/stratus/stratus:{version}"
    assert target["args"]["VERSION"] == version
    assert target["labels"].get("org.opencontainers.image.source", "") == ""


def test_bake_rejects_prerelease_version(bake: Callable[..., dict[str, Any]]) -> None:
    for version in ("1.0.0-rc.1", "1.0", "v1.0.0", "1.0.0.0"):
        with pytest.raises(BakeError):
            bake(VERSION=version)


def test_bake_target_platforms_and_inputs(bake: Callable[..., dict[str, Any]]) -> None:
    target = _target(bake(VERSION="2.1.2", SOURCE="https://git.example/stratus"))
    assert target["platforms"] == PLATFORMS
    assert target["context"] == "."
    assert target["dockerfile"] == "Dockerfile"
    assert target["args"] == {"VERSION": "2.1.2", "SOURCE": "https://git.example/stratus"}
    assert target["labels"] == {
        "org.opencontainers.image.source": "https://git.example/stratus",
        "org.opencontainers.image.version": "2.1.2",
    }


def test_bake_arguments_exist_in_dockerfile(final_stage: Stage) -> None:
    arguments = _target(bake_with_hcl2({}))["args"]
    assert set(arguments) <= set(final_stage.arguments_by_name())


# ---------------------------------------------------------------- the image's environment, without Docker


def _run_as_image_user(command: Sequence[str]) -> list[str]:
    # setpriv (util-linux) changes the ids and execs, so the process keeps the pid Popen returns.
    return ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_GID}", "--clear-groups", "--", *command]


def _find_image_python(version: str) -> str | None:
    """Return an interpreter of `version` that the image user can run, or None.

    Each candidate is probed as that user, because an interpreter under a directory it
    cannot enter (pyenv's under /root, for example) fails for it.
    """
    candidates = [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}", shutil.which(f"python{version}")]
    for candidate in candidates:
        if candidate is None or not os.path.isfile(candidate):
            continue
        probe = subprocess.run(
            _run_as_image_user([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"]),
            capture_output=True, text=True, timeout=30, check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


@dataclass(frozen=True)
class ImageEnvironment:
    """The final stage's files rebuilt under `root`, with image paths mapped to them."""

    root: Path
    venv: Path
    environment: dict[str, str]

    def command(self, arguments: Sequence[str]) -> list[str]:
        """Return `arguments` with the program looked up on the image's PATH, run as the image user."""
        program = shutil.which(arguments[0], path=self.environment["PATH"])
        assert program is not None, f"{arguments[0]} is not on the image's PATH {self.environment['PATH']}"
        return _run_as_image_user([program, *arguments[1:]])


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    # pytest's tmp_path is under a 0700 directory of root, which the image user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="stratus-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def built_wheel(image_root: Path, builder_stage: Stage) -> Path:
    """Build the wheel as the builder stage does, from the files its COPY lines send."""
    patterns = read_dockerignore(DOCKERIGNORE)
    workdir = builder_stage.find_one("WORKDIR").arguments
    source = image_root / "src"
    source.mkdir()
    for _, paths in _copies(builder_stage):
        *sources, destination = paths
        target = source / os.path.relpath(os.path.join(workdir, destination), workdir)
        into_directory = destination.endswith("/") or len(sources) > 1
        for item in sources:
            _copy_from_context(item, target, into_directory, patterns)

    wheels = image_root / "wheels"
    run_tool([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
             timeout=PIP_TIMEOUT)
    version = builder_stage.arguments_by_name()["VERSION"]
    built = sorted(path.name for path in wheels.iterdir())
    # The builder's RUN stops the build unless this exact file was built.
    assert built == [f"stratus-{version}-py3-none-any.whl"]
    return wheels / built[0]


def _copy_from_context(item: str, target: Path, into_directory: bool,
                       patterns: Sequence[tuple[bool, re.Pattern[str]]]) -> None:
    assert not any(character in item for character in "*?["), f"COPY source {item} uses a wildcard"
    path = REPOSITORY / item
    if path.is_file():
        assert not is_excluded(item, patterns), f"COPY {item}, but .dockerignore leaves it out"
        destination = target / path.name if into_directory else target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        return
    # COPY of a directory copies what it contains, less what .dockerignore leaves out.
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(REPOSITORY).as_posix()
        if file.is_file() and not is_excluded(relative, patterns):
            destination = target / file.relative_to(path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination)


@pytest.fixture(scope="module")
def image_environment(image_root: Path, built_wheel: Path, final_stage: Stage) -> ImageEnvironment:
    """Install the wheel with the `fast` extra into a venv without pip, as the builder does."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running the server as the image's uid needs root and setpriv (util-linux)")
    version = _python_version(final_stage)
    python = _find_image_python(version)
    if python is None:
        pytest.skip(f"no Python {version} that uid {IMAGE_UID} can run; the image's base is {final_stage.base}")

    venv = image_root / "venv"
    run_tool([python, "-m", "venv", "--without-pip", str(venv)], timeout=60)
    run_tool([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--quiet",
              f"{built_wheel}[fast]"], timeout=PIP_TIMEOUT)

    # The image's ENV, with the venv at its place here and the host's standard PATH in
    # place of the base image's.
    image_venv = _venv_path(final_stage)
    environment: dict[str, str] = {}
    for name, value in final_stage.environment().items():
        expanded = expand_variables(value, {"PATH": "/usr/local/bin:/usr/bin:/bin", **environment})
        environment[name] = expanded.replace(image_venv, str(venv))

    data = image_root / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_GID)
    data.chmod(0o750)
    environment["STRATUS_DATA_DIR"] = str(data)
    environment["HOME"] = str(data)
    return ImageEnvironment(image_root, venv, environment)


def test_image_venv_has_no_pip(image_environment: ImageEnvironment) -> None:
    bin_directory = image_environment.venv / "bin"
    assert not (bin_directory / "pip").exists()
    assert (bin_directory / "stratus").is_file()
    for module, expected in (("pip", False), ("setuptools", False), ("uvloop", True), ("httptools", True)):
        found = subprocess.run(
            [str(bin_directory / "python"), "-c", f"import importlib.util, sys; "
             f"sys.exit(importlib.util.find_spec({module!r}) is None)"],
            timeout=30, check=False,
        )
        assert (found.returncode == 0) == expected, module


def test_dependencies_have_wheels_for_both_platforms(image_root: Path, built_wheel: Path, final_stage: Stage) -> None:
    # The slim builder has no C compiler, so each dependency must be a wheel for each platform.
    version = _python_version(final_stage)
    machines = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
    for platform in PLATFORMS:
        machine = machines[platform]
        # Debian bookworm has glibc 2.36, so manylinux 2.17 (manylinux2014) to 2.36 wheels
        # run there. Every tag is listed because older pip versions do not add lower ones.
        tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, 37)] + [f"manylinux2014_{machine}"]
        report = image_root / f"resolve-{machine}.json"
        run_tool(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--only-binary=:all:", *(f"--platform={tag}" for tag in tags), "--python-version", version,
             "--implementation", "cp", "--target", str(image_root / "unused"), "--report", str(report),
             f"{built_wheel}[fast]"],
            timeout=PIP_TIMEOUT,
        )
        names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
        assert {"stratus", "uvloop", "httptools", "orjson", "botocore", "uvicorn"} <= names, platform


def _process_ids(pid: int) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            fields[name] = value.split()
    return fields


def _run_image_command(
    image: ImageEnvironment, arguments: Sequence[str], **variables: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        image.command(arguments),
        env=child_environment({**image.environment, **variables}),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False,
    )


def test_serve_runs_as_image_user(image_environment: ImageEnvironment, final_stage: Stage,
                                  registry_factory: Any) -> None:
    entrypoint = parse_exec_form(final_stage.find_one("ENTRYPOINT").arguments)
    command = parse_exec_form(final_stage.find_one("CMD").arguments)
    registry = registry_factory(env=image_environment.environment,
                                command=image_environment.command([*entrypoint, *command]))

    ids = _process_ids(registry.pid)
    assert ids["Uid"] == [str(IMAGE_UID)] * 4
    assert ids["Gid"] == [str(IMAGE_GID)] * 4
    assert ids["Groups"] == []
    executable = os.readlink(f"/proc/{registry.pid}/exe")
    assert os.path.realpath(image_environment.venv / "bin/python") == executable

    with httpx.Client(base_url=registry.url, timeout=10) as client:
        base = client.get("/v2/")
        assert base.status_code == 200
        assert base.content == b"{}"
        assert client.get("/healthz").status_code == 200
        # /readyz checks that the server's user can read and enter the data directory.
        assert client.get("/readyz").status_code == 200

    healthcheck = _healthcheck_command(final_stage)
    healthy = _run_image_command(image_environment, healthcheck, PORT=str(registry.port))
    assert healthy.returncode == 0, healthy.stderr.decode()
    registry.stop()
    unhealthy = _run_image_command(image_environment, healthcheck, PORT=str(registry.port))
    assert unhealthy.returncode != 0


def test_push_then_serve_as_image_user(image_environment: ImageEnvironment, final_stage: Stage,
                                       registry_factory: Any) -> None:
    layout_directory = image_environment.root / "layouts"
    layout_directory.mkdir(exist_ok=True)
    layout = generate_layout(layout_directory / "image.tar", LayoutSpec())
    entrypoint = parse_exec_form(final_stage.find_one("ENTRYPOINT").arguments)

    pushed = _run_image_command(image_environment, [*entrypoint, "push", str(layout.path), "local/app:1.0"])
    assert pushed.returncode == 0, pushed.stderr.decode()
    index = Path(image_environment.environment["STRATUS_DATA_DIR"]) / "local/app/index.json"
    assert index.stat().st_uid == IMAGE_UID

    command = parse_exec_form(final_stage.find_one("CMD").arguments)
    registry = registry_factory(env=image_environment.environment,
                                command=image_environment.command([*entrypoint, *command]))
    with httpx.Client(base_url=registry.url, timeout=10) as client:
        manifest = client.get("/v2/local/app/manifests/1.0", headers={"Accept": layout.descriptor["mediaType"]})
    assert manifest.status_code == 200
    assert manifest.headers["docker-content-digest"] == layout.digest

