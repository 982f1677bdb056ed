"""``lint-imports`` on kd-env as it is installed: the import contracts in pyproject.toml, checked.

``agents/`` and ``baselines/`` install as ``kd_env.agents`` and ``kd_env.baselines`` (setup.cfg's
``package_dir``), so they are not below ``kd_env/`` on disk, and grimp (import-linter's graph
builder) would neither find them under ``kd_env`` nor resolve ``from kd_env.baselines.rules
import ...``: such an import would count as one of the package ``kd_env`` itself, and a contract
would pass without seeing it. This script builds grimp's graph of the three folders, names their
modules as installed (``agents.base`` -> ``kd_env.agents.base``), re-resolves each import that
grimp could only attribute to ``kd_env`` from its source line, and then runs import-linter's own
command line (same options, same output, same exit code) on that graph.

Run from the repository root: ``python tools/lint_imports.py`` (``make lint`` does).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import grimp
from importlinter import cli
from importlinter.adapters.building import GraphBuilder
from importlinter.application.app_config import settings

ROOT = Path(__file__).resolve().parent.parent
#: folder on disk -> package name once installed (setup.cfg, [options] package_dir)
INSTALLED_AS = {"agents": "kd_env.agents", "baselines": "kd_env.baselines"}
_IMPORT_LINE = re.compile(r"^\s*(?:from\s+(?P<from>[\w.]+)\s+import\s+(?P<names>.*)|import\s+(?P<module>[\w.]+))")


def installed_name(module: str) -> str:
    """``agents.base`` -> ``kd_env.agents.base``; kd_env's own names unchanged."""
    top, _, rest = module.partition(".")
    if top in INSTALLED_AS:
        return INSTALLED_AS[top] + ("." + rest if rest else "")
    return module


def resolve_line(line: str, modules: set[str]) -> set[str]:
    """The kd-env modules a source line imports: the deepest existing module each name reaches."""
    match = _IMPORT_LINE.match(line)
    if match is None:
        return set()
    if match["module"]:
        candidates = [match["module"]]
    else:
        names = [name.split(" as ")[0].strip() for name in match["names"].strip("() \\").split(",")]
        candidates = [f"{match['from']}.{name}" for name in names if name] or [match["from"]]
    found = set()
    for candidate in candidates:
        parts = candidate.split(".")
        for end in range(len(parts), 0, -1):
            name = ".".join(parts[:end])
            if name in modules:
                found.add(name)
                break
    return found


def installed_graph(graph: grimp.ImportGraph, include_external_packages: bool = False) -> grimp.ImportGraph:
    """``graph`` (built with ``include_external_packages=True``) with its modules named as
    installed and the imports of ``kd_env.agents`` / ``kd_env.baselines`` resolved, which grimp
    can only attribute to the (external-looking) package ``kd_env``; other packages dropped
    unless ``include_external_packages``."""
    roots = {"kd_env", *INSTALLED_AS}

    def kept(module: str) -> bool:
        return include_external_packages or module.partition(".")[0] in roots

    renamed = grimp.ImportGraph()
    modules = {installed_name(module) for module in graph.modules if kept(module)}
    for module in graph.modules:
        if kept(module):
            renamed.add_module(installed_name(module), is_squashed=graph.is_module_squashed(module))
    for importer in graph.modules:
        if not kept(importer):
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            if not kept(imported):
                continue
            details = graph.get_import_details(importer=importer, imported=imported)
            lines = [(detail["line_number"], detail["line_contents"]) for detail in details] or [(0, "")]
            for line_number, line_contents in lines:
                targets = {installed_name(imported)}
                if imported == "kd_env" and line_contents:
                    targets = resolve_line(line_contents, modules) or targets
                for target in targets:
                    if target != installed_name(importer):
                        renamed.add_import(
                            importer=installed_name(importer),
                            imported=target,
                            line_number=line_number,
                            line_contents=line_contents,
                        )
    return renamed


class InstalledLayoutGraphBuilder(GraphBuilder):
    """import-linter's graph builder for kd-env's installed layout (see the module docstring)."""

    def build(
        self,
        root_package_names: list[str],
        cache_dir: str | None,
        include_external_packages: bool = False,
        exclude_type_checking_imports: bool = False,
    ) -> grimp.ImportGraph:
        if root_package_names != ["kd_env"]:
            raise ValueError(f"this builder is for root_packages = ['kd_env'], got {root_package_names}")
        graph = grimp.build_graph(
            "kd_env",
            *INSTALLED_AS,
            include_external_packages=True,  # kd_env.agents / kd_env.baselines look external from agents/ and baselines/
            exclude_type_checking_imports=exclude_type_checking_imports,
            cache_dir=cache_dir,
        )
        return installed_graph(graph, include_external_packages)


def main() -> None:
    sys.path.insert(0, str(ROOT))  # the folders agents/ and baselines/ as top-level packages, for grimp
    settings.configure(GRAPH_BUILDER=InstalledLayoutGraphBuilder())
    cli.lint_imports_command()


if __name__ == "__main__":
    main()
