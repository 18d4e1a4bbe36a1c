"""`--help` for the recipes and the eval scripts that take config overrides: every config field with its value under
the recipe's YAML and the description written beside it in the source (the `#` comment on the field's line, or the
`#` lines just above it), so that the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap

from apo_online.config import Config, load_config
from apo_online.optimizers.registry import known_optimizer_names

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=]+?(\s*=.*)?$")


def field_descriptions(cls) -> dict[str, str]:
    """field name -> its comment in the dataclass source ('' when it has none)."""
    descriptions: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("# ---"):  # a group heading, not a description
            above = []
        elif stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
        elif (match := _FIELD.match(line)) and not stripped.startswith(("def ", "class ", "@", '"')):
            beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            descriptions[match.group(1)] = " ".join(filter(None, [" ".join(above), beside]))
            above = []
        else:
            above = []
    return descriptions


def config_help(default_yaml=None, width: int = 100) -> str:
    """Every section's fields as `--section.field VALUE  description`, VALUE as the recipe sets it."""
    config = load_config([], default_yaml=default_yaml)
    sections = [(name, getattr(config, name)) for name in Config.CORE_SECTIONS]
    sections += [(name, config.optimizer_config(name)) for name in known_optimizer_names()]
    out = ["config fields (--section.field VALUE; shown with the recipe's value):"]
    for name, section in sections:
        out.append(f"\n{name}:" + ("" if name in Config.CORE_SECTIONS else "  (with game.policy_optimizer " +
                                   f"{name})"))
        described = field_descriptions(type(section))
        for f in dataclasses.fields(section):
            out.append(f"  --{name}.{f.name} {getattr(section, f.name)!r}")
            text = described.get(f.name, "")
            if text:
                out.extend(textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(out)


REFERENCE_RECIPE = "ppo"
REGENERATE = "python -m apo_online.config_help --markdown > docs/configuration.md"


def _markdown_value(value) -> str:
    """A field's value as it would be written in YAML, in backticks (null, true, [rm], 1.0e-4 as 0.0001)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_markdown_value(v).strip("`") for v in value) + "]"
    elif isinstance(value, str):
        text = value if value.strip() == value and value else repr(value)
    else:
        text = str(value)
    return f"`{text}`"


def _text(text: str) -> str:
    """Source text as markdown: `<name>` would read as an HTML tag, `|` would end a table cell."""
    return " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _section_doc(cls) -> str:
    """The section class's own docstring (a dataclass without one gets its signature as __doc__: left out)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc)


def config_reference_markdown(recipe: str = REFERENCE_RECIPE) -> str:
    """The configuration reference as markdown (docs/configuration.md is this, written by `REGENERATE`): the same
    field docs as --help, one table per section (every core section, then every built-in optimizer's), each field
    with its value under the recipe's YAML, its dataclass default and the description beside it in the source."""
    from apo_online.optimizers.registry import BUILTIN_MODULES
    from apo_online.recipes import recipe_yaml

    yaml_path = recipe_yaml(recipe)
    config, defaults = load_config([], default_yaml=yaml_path), Config()
    # built-in optimizers only: a user's registered optimizer (imported by a test, say) must not change the page
    optimizers = [name for name in BUILTIN_MODULES if name in known_optimizer_names()]
    sections = [(name, getattr(config, name), getattr(defaults, name)) for name in Config.CORE_SECTIONS]
    sections += [(name, config.optimizer_config(name), defaults.optimizer_config(name)) for name in optimizers]
    yaml_name = f"apo_online/recipes/{yaml_path.name}"
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the config dataclasses and {yaml_name}; do not edit. Regenerate with: {REGENERATE} -->",
        "",
        f"Every config field, with its value under the {recipe} recipe's YAML (`{yaml_name}`), its dataclass",
        "default and the description written beside it in the source: the text that `--help` prints",
        f"(`apo-online {recipe} --help`, `python recipes/apo_{recipe}.py --help`). A field is set as",
        "`section.field: value` in a YAML file (`--config my.yaml`) or as `--section.field value` on the command",
        "line. How the layers combine and what the main knobs mean: [Configuring a run](usage.md).",
        "",
        "Sections: " + ", ".join(f"[`{name}:`](#{name})" for name, _, _ in sections) + ".",
    ]
    for name, section, default in sections:
        out += ["", f"## {name}", ""]
        if name not in Config.CORE_SECTIONS:
            out += [f"Read when `game.policy_optimizer` is `{name}`.", ""]
        for paragraph in filter(None, _section_doc(type(section)).split("\n\n")):
            out += [_text(paragraph), ""]
        out += [f"| field | {recipe} recipe | default | description |", "|---|---|---|---|"]
        described = field_descriptions(type(section))
        for f in dataclasses.fields(section):
            value, default_value = (_markdown_value(getattr(s, f.name)).replace("|", "\\|") for s in (section, default))
            out.append(f"| `{name}.{f.name}` | {value} | {default_value} | {_text(described.get(f.name, ''))} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        print(f"usage: python -m apo_online.config_help --markdown   (the configuration reference; {REGENERATE})",
              file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(config_reference_markdown())
