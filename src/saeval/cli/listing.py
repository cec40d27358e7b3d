"""``saeval list evals|hooks`` and ``saeval show EVAL``: what can be run and every field it takes."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from saeval.cli.common import one_line_errors
from saeval.errors import SaevalError


def _type_name(annotation: Any) -> str:
    from typing import get_origin

    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def field_rows(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field, nested configs flattened with dots."""
    from pydantic import BaseModel

    rows = []
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += field_rows(ann, f"{prefix}{name}.")
            continue
        default = info.get_default(call_default_factory=True)
        rows.append((prefix + name, _type_name(ann), json.dumps(default, default=str), info.description or ""))
    return rows


@one_line_errors
def show(eval_name: Annotated[str, typer.Argument(help="an eval (saeval list evals)")]) -> None:
    """Every config field of an eval: type, default (the paper's constant), description, preset values."""
    from rich.console import Console
    from rich.table import Table

    from saeval.evals import get_eval

    spec = get_eval(eval_name)
    table = Table(title=f"{spec.name}: {spec.description}", title_justify="left")
    for col in ("field", "type", "default", *spec.presets, "description"):
        table.add_column(col, overflow="fold")
    for name, typ, default, desc in field_rows(spec.config_cls):
        preset_values = []
        for preset in spec.presets:
            node: Any = spec.presets[preset]
            for part in name.split("."):
                node = node.get(part, "") if isinstance(node, dict) else ""
            preset_values.append("" if node == "" else json.dumps(node, default=str))
        table.add_row(name, typ, default, *preset_values, desc)
    Console(width=200).print(table)
    print(f"set with: saeval run --set {spec.name}.FIELD=VALUE, or a [{spec.name}] table in --config FILE")


@one_line_errors
def list_(
    what: Annotated[str, typer.Argument(help="evals, studies or hooks")],
    model: Annotated[str, typer.Option(help="model whose hooks to list")] = "smollm2-135m",
    fields: Annotated[bool, typer.Option("--fields", help="with every config field (as saeval show)")] = False,
) -> None:
    """List the registered evals (and their fields), the studies, or the hook names of a model."""
    if what == "evals":
        from saeval.evals import EVALS, get_eval

        get_eval("core")
        for name, spec in sorted(EVALS.items()):
            presets = ", ".join(["paper", *spec.presets])
            print(f"{name:16s} {spec.description}  [presets: {presets}]")
            if fields:
                for field, typ, default, desc in field_rows(spec.config_cls):
                    print(f"    {field:28s} {typ:24s} {default:14s} {desc}")
    elif what == "studies":
        from saeval.studies.base import STUDIES, get_study

        get_study(next(iter(STUDIES), "case_study"))
        for name, spec in sorted(STUDIES.items()):
            print(f"{name:16s} {spec.description}  [presets: {', '.join(['paper', *spec.presets])}]")
    elif what == "hooks":
        from saeval.hosts import LanguageHost

        print("\n".join(LanguageHost.load(model).hook_names()))
    else:
        raise SaevalError(f"saeval list takes 'evals', 'studies' or 'hooks', not {what!r}")
