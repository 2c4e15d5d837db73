"""The base of the option dataclasses (ReadOptions, BuildOptions, ClassifyOptions, ClusterOptions).

Options travel as frozen dataclasses, validated once in `__post_init__`; a variant is made with `replace`, which
validates again and refuses names that are not options.
"""

from __future__ import annotations

import dataclasses

from .errors import UsageError


class Options:
    """Mixin of the option dataclasses: `replace` and `as_dict`. `kind` names the options in messages."""

    kind = ""
    renamed: dict[str, str] = {}   # an old name -> the field that replaced it (said in the refusal)

    def replace(self, **changes):
        """A copy with some fields changed (unknown names raise UsageError)."""
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            hints = [f"{old} is now `{new}`" for old, new in self.renamed.items() if old in unknown]
            raise UsageError(f"unknown {self.kind} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                             + (f" ({'; '.join(hints)})" if hints else ""))
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
