"""Online template mining from line shapes and position statistics, with no per-source settings.

A masked line becomes a *shape*: its whitespace tokens, with every token that holds nothing but
masked values and punctuation (``<NUM>``, ``[<UUID>]``, ``<IP>:<NUM>``) read as one variable ``<*>``,
a field's value read as a variable (``user=<*>``, ``[StationName: <*>]``: what stands behind a field
name is a parameter, however few its values), and runs of the same variable token (a list of block
ids) read as one. Lines of one shape are one template; its text shows a word as printed until a
line prints it otherwise. Two rules then generalise shapes, each from statistics of the lines seen so far, so that
no similarity threshold has to suit every log source (Drain's ``sim_th`` does not):

- **Position statistics.** Shapes that agree everywhere but at one position are one template with a
  variable there once ``min_values`` distinct words have filled it, or a word and a masked value
  have. A template word repeats: a logging statement prints it on every line; a variable takes many
  values (Brain, Yu et al., TSC 2023: template words share the highest frequency; ULP, Sedki et al.,
  ICSE-SEIP 2022: positions classified by their value counts). The rest of the line must hold at
  least ``min_constants`` words, so that two short lines do not merge on one shared word. The new
  variable keeps a prefix or suffix its values all share up to punctuation (``user=<*>``).
- **Loose shapes.** Shapes whose words agree in order, with any number of variable tokens between
  them, are one template, so an optional value (``(1.16 KB)``) or a value that spans several tokens
  does not split a statement (the order-preserving common subsequence of Spell, Du and Li, ICDM
  2016, restricted to equal words).

Learning is one pass and online: each line is assigned when it arrives, and a later generalisation
merges templates (union-find: an early id then resolves to its template's id). Matching never learns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

WILDCARD = "<*>"
KIND_TOKEN = re.compile(r"<([A-Z]+)>")  # a mask's value marker, as the masks write it (<NUM>, <IP>...)
_SIGN = re.compile(r"(^|[^A-Za-z0-9])[-+]<\*>")  # -<*>: the sign belongs to the value
_JOINED = re.compile(r"<\*>(?:[^\sA-Za-z]*<\*>)+")  # <*>.<*>, <*>:<*>: one value (Khan et al. ICSE 2022, DV/CV)
_LETTER = re.compile(r"[A-Za-z]")
WORD_KIND = "WORD"  # the kind of a variable found by position statistics rather than by a mask

Shape = tuple[str, ...]


# A field's value is a parameter whatever its few values are: ``user=root``, ``[StationName: nanjing]``,
# ``..., TrainType: ZhiDa]``, ``[trainNumber:Z1234]`` (a name, ``=`` or ``:``, and a value that ends
# the token or closes its field); constants that name a statement do not sit behind a field name
_FIELD_IN_TOKEN = re.compile(r"((?:^|[\[(,{])[A-Za-z_][\w.-]*=|\[[A-Za-z_][\w.-]*:)[^\s=:<>\[\](){},;]+([\]),;}]*)$")
_FIELD_NAME_ENDS = re.compile(r"[A-Za-z_][\w.-]*:$")
_CLOSED_VALUE = re.compile(r"^[^\s=:<>\[\](){},;]+([\]),;}]+)$")


def _field_value(token: str, before: str) -> str:
    """A field's value in a token as ``<*>`` (the name and closing punctuation kept)."""
    inside = _FIELD_IN_TOKEN.search(token)
    if inside:
        return token[: inside.start()] + inside.group(1) + WILDCARD + inside.group(2)
    closed = _CLOSED_VALUE.match(token)
    if closed and _FIELD_NAME_ENDS.search(before):
        return WILDCARD + closed.group(1)
    return token


def line_shape(masked: str) -> tuple[Shape, tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """A masked line's shape (grouping key), its display tokens (punctuation kept), and per display
    token the kinds of the values in it."""
    shape: list[str] = []
    shown: list[str] = []
    kinds: list[tuple[str, ...]] = []
    raws = masked.split()
    before = ""
    for raw in raws:
        marked = "<" in raw  # most tokens are plain words: no regex for them
        token = _JOINED.sub(WILDCARD, _SIGN.sub(r"\1" + WILDCARD, KIND_TOKEN.sub(WILDCARD, raw))) if marked else raw
        key = _field_value(token, before) if ("=" in token or ":" in token or before.endswith(":")) else token
        before = raw
        if WILDCARD in key and not _LETTER.search(key.replace(WILDCARD, "")):
            key = WILDCARD
        if shape and key == shape[-1] and WILDCARD in key:
            continue  # a run of the same variable token is one value
        shape.append(key)
        shown.append(token)
        if not marked:
            kinds.append(())
            continue
        found = tuple(KIND_TOKEN.findall(raw))
        values = token.count(WILDCARD)
        kinds.append(found[:values] if len(found) >= values else found + (WORD_KIND,) * (values - len(found)))
    return tuple(shape), tuple(shown), tuple(kinds)


def _shared_affix(words: Sequence[str]) -> str:
    """``prefix<*>suffix`` that every value shares, cut at punctuation (``user=root``, ``user=bob`` -> ``user=<*>``)."""
    if not words:
        return WILDCARD
    prefix = os.path.commonprefix(list(words))
    suffix = os.path.commonprefix([w[::-1] for w in words])[::-1]
    head = re.match(r".*[^A-Za-z0-9]", prefix)
    tail = re.match(r"[^A-Za-z0-9].*", suffix)
    prefix, suffix = (head.group(0) if head else ""), (tail.group(0) if tail else "")
    if len(prefix) + len(suffix) >= min(len(w) for w in words):
        return WILDCARD
    return prefix + WILDCARD + suffix


class ShapeParser:
    """Templates from line shapes (see the module docstring).

    Args:
        min_values: distinct words at one position (the rest of the line equal) that make it a variable.
        min_constants: words the rest of the line must hold for a position to be counted.
    """

    def __init__(self, min_values: int = 5, min_constants: int = 2) -> None:
        self.min_values = min_values
        self.min_constants = min_constants
        self.parent: list[int] = []  # union-find over template ids
        self.shape_of: list[list[str]] = []  # per id: its shape, generalised as positions become variables
        self.shown: list[list[str]] = []  # per id: its first line's display tokens, values found since as <*>
        self.kinds: list[list[tuple[str, ...]]] = []  # per id and display token: the kinds of its values
        self.exact: dict[Shape, int] = {}
        self.values: dict[tuple[int, int, Shape], dict[str, int]] = {}
        self.wild_sets: dict[int, set[tuple[int, ...]]] = {}  # shape length -> variable positions in use
        self.general: dict[tuple[int, tuple[int, ...], Shape], int] = {}
        self.loose: dict[Shape, int] = {}

    # -- lookup -------------------------------------------------------------------------------
    def find(self, cluster: int) -> int:
        parent = self.parent
        while parent[cluster] != cluster:
            parent[cluster] = parent[parent[cluster]]
            cluster = parent[cluster]
        return cluster

    def match(self, shape: Shape) -> int | None:
        """The template id a shape belongs to, or None; learns nothing."""
        found = self.exact.get(shape)
        if found is None:
            found = self._general_match(shape)
        if found is None:
            found = self.loose.get(self._loose_key(shape))
        return None if found is None else self.find(found)

    def _general_match(self, shape: Shape) -> int | None:
        n = len(shape)
        for wild in self.wild_sets.get(n, ()):
            generalised = list(shape)
            for i in wild:
                generalised[i] = WILDCARD
            found = self.general.get((n, wild, tuple(generalised)))
            if found is not None:
                return found
        return None

    @staticmethod
    def _loose_key(tokens: Sequence[str]) -> Shape:
        return tuple(t for t in tokens if t != WILDCARD)

    # -- learning -----------------------------------------------------------------------------
    def learn(self, shape: Shape, shown: Sequence[str] = (), kinds: Sequence[tuple[str, ...]] = ()) -> int:
        """Assign a shape to a template, creating or generalising templates; returns its id now."""
        found = self.match(shape)
        if found is not None:
            self.exact.setdefault(shape, found)
            self._show_differences(found, shown)
            return found
        cluster = len(self.parent)
        self.parent.append(cluster)
        self.shape_of.append(list(shape))
        self.shown.append(list(shown or shape))
        self.kinds.append(list(kinds) or [(WORD_KIND,) * t.count(WILDCARD) for t in self.shown[-1]])
        self.exact[shape] = cluster
        self._join_loose(cluster, self._loose_key(shape))
        n = len(shape)
        words = n - shape.count(WILDCARD)
        for p, token in enumerate(shape):
            if words - (token != WILDCARD) < self.min_constants:
                continue
            seen = self.values.setdefault((n, p, shape[:p] + shape[p + 1:]), {})
            seen[token] = cluster
            if len(seen) >= self.min_values or (WILDCARD in seen and len(seen) >= 2):
                self._generalise(n, p, seen)
        return self.find(cluster)

    def _join_loose(self, cluster: int, key: Shape) -> None:
        other = self.loose.get(key)
        if other is not None and self.find(other) != self.find(cluster):
            self._union(self.find(other), self.find(cluster))
        self.loose.setdefault(key, cluster)

    def _union(self, keep: int, drop: int) -> None:
        """Merge template ``drop`` into ``keep``: positions where their shapes differ become variables."""
        keep, drop = min(keep, drop), max(keep, drop)
        mine, theirs = self.shape_of[keep], self.shape_of[drop]
        if len(mine) == len(theirs):
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if a != b:
                    mine[i] = WILDCARD
                    self._show_variable(keep, i, _shared_affix([self.shown[keep][i], self.shown[drop][i]]))
        self.parent[drop] = keep

    def _generalise(self, n: int, p: int, seen: dict[str, int]) -> None:
        roots = sorted({self.find(c) for c in seen.values()})
        root = roots[0]  # the smallest id: the one every union keeps
        words = [w for w in seen if w != WILDCARD]
        self._show_variable(root, p, _shared_affix(words) if len(words) == len(seen) else WILDCARD)
        for other in roots[1:]:
            self._union(root, self.find(other))
        shape = self.shape_of[root]
        shape[p] = WILDCARD
        wild = tuple(i for i, t in enumerate(shape) if t == WILDCARD)
        self.wild_sets.setdefault(n, set()).add(wild)
        self.general[(n, wild, tuple(shape))] = root
        loose = self._loose_key(self.shown_shape(root))
        self._join_loose(root, loose)

    def _show_differences(self, root: int, shown: Sequence[str]) -> None:
        """A template's display word that this line writes differently is a value (``tty=ssh`` stays
        as printed until another line writes ``tty=pts``)."""
        mine = self.shown[root]
        if len(shown) != len(mine):
            return
        for p, (have, new) in enumerate(zip(mine, shown, strict=True)):
            if have != new and WILDCARD not in have:
                self._show_variable(root, p, _shared_affix([have, new]))

    def _show_variable(self, root: int, p: int, token: str) -> None:
        """Write a variable found by statistics into the template's display tokens."""
        shown = self.shown[root]
        if WILDCARD not in shown[p]:
            shown[p] = token
            self.kinds[root][p] = (WORD_KIND,)

    def shown_shape(self, root: int) -> Shape:
        """The template's tokens as grouping sees them, a variable with a kept affix (``user=<*>``) as a word."""
        return tuple(shown if token == WILDCARD and _LETTER.search(shown.replace(WILDCARD, "")) else token
                     for token, shown in zip(self.shape_of[root], self.shown[root], strict=True))

    # -- results ------------------------------------------------------------------------------
    def templates(self) -> dict[int, str]:
        """Template id -> text, every variable written ``<*>``."""
        return {i: " ".join(self.shown[i]) for i in range(len(self.parent)) if self.parent[i] == i}

    def parameter_kinds(self) -> dict[int, list[str]]:
        """Template id -> the kind of each ``<*>`` in its text, in order (NUM, IP, HEX, ..., WORD)."""
        out = {}
        for i in range(len(self.parent)):
            if self.parent[i] == i:
                out[i] = [kind for token_kinds in self.kinds[i] for kind in token_kinds]
        return out

    def state(self) -> dict[str, Any]:
        """Everything learned, as JSON-ready lists (for save/load)."""
        return {"min_values": self.min_values, "min_constants": self.min_constants, "parent": self.parent,
                "shape_of": self.shape_of, "shown": self.shown,
                "kinds": [[list(k) for k in token_kinds] for token_kinds in self.kinds],
                "exact": [[list(s), c] for s, c in self.exact.items()],
                "values": [[n, p, list(rest), sorted(seen.items())] for (n, p, rest), seen in self.values.items()],
                "general": [[n, list(w), list(s), c] for (n, w, s), c in self.general.items()],
                "loose": [[list(s), c] for s, c in self.loose.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShapeParser:
        parser = cls(min_values=state["min_values"], min_constants=state["min_constants"])
        parser.parent = list(state["parent"])
        parser.shape_of = [list(s) for s in state["shape_of"]]
        parser.shown = [list(s) for s in state["shown"]]
        parser.kinds = [[tuple(k) for k in token_kinds] for token_kinds in state["kinds"]]
        parser.exact = {tuple(s): c for s, c in state["exact"]}
        parser.values = {(n, p, tuple(rest)): dict(seen) for n, p, rest, seen in state["values"]}
        for n, wild, shape, cluster in state["general"]:
            parser.wild_sets.setdefault(n, set()).add(tuple(wild))
            parser.general[(n, tuple(wild), tuple(shape))] = cluster
        parser.loose = {tuple(s): c for s, c in state["loose"]}
        return parser
