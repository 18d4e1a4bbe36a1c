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
