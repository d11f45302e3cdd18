"""YAML for specs: safe types only, no aliases (a "billion laughs" document expands without
bound), no duplicate keys (the last would silently win), and error values shortened."""

from __future__ import annotations

import reprlib

import yaml

MAX_SPEC_BYTES = 1_000_000  # a spec is a page of YAML; anything near this is not one

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 80, 80, 6, 6


def short(value) -> str:
    """A value as an error message may quote it: at most about 80 characters."""
    return _short.repr(value)


class SpecYAMLError(ValueError):
    """Not a spec's YAML: the message names the line and what to change."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (a 'billion laughs' expands without bound) and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SpecYAMLError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                                "in a spec; write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise SpecYAMLError(f"line {key_node.start_mark.line + 1}: duplicate key {short(key)} (first on line "
                                    f"{seen[key]}); a key may appear once per mapping")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """The one document in `text`, read by the strict safe loader."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
