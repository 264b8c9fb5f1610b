"""Log template mining: vectorised pre-masking, one parser call per distinct masked line.

Two online parsers sit behind one front end. The default, ``shapes``
(:mod:`detectors.logs.shapes`), needs no per-source settings: it groups lines by their shape and
finds variables from position statistics. ``drain`` is Drain (He et al., ICWS 2017) via the drain3
package, with the paper's parse-tree routing (:mod:`detectors.logs.drain_tree`), whose similarity
threshold and depth are per-source settings. Many lines repeat once their variable parts (ids,
numbers, IPs) are masked, so lines are masked column-wise, de-duplicated, and only the distinct
masked lines go through the parser; results are mapped back by index. Learning is kept apart from
matching, as in drain3. Templates write every variable as ``<*>``, as loghub's labels do; the kind
of each (``NUM``, ``IP``, ..., ``WORD`` for one found by statistics) is kept beside the text
(:meth:`TemplateMiner.parameter_kinds`).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from detectors.logs.shapes import KIND_TOKEN, WILDCARD, WORD_KIND, ShapeParser, line_shape

# RE2-compatible (no look-arounds), so pandas runs them in pyarrow's vectorised regex engine; a
# user mask with look-arounds still works, through Python's re, only slower.
# (regex, token, text the regex cannot match without: lines lacking it skip the regex, which is
# most of a fit's time; None = no such text)
_BUILT_IN: list[tuple[str, str, str | None]] = [
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>", "-"),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>", "."),
    (r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", "<URL>", "://"),
    # a duration (``12 ms``, ``<1 sec``, ``3.5 seconds``) and a size (``5.2 KB``) with the unit: the
    # unit changes with the value (``384.0 B`` ... ``17.7 GB``), so it is part of the value
    (r"<?\b\d+(?:\.\d+)? ?(?:ms|sec|secs|seconds|s|min|mins|minutes)\b", "<DURATION>", None),
    (r"\b\d+(?:\.\d+)? ?(?:B|KB|MB|GB|TB|KiB|MiB|GiB)\b", "<SIZE>", None),
    # a dotted name of three parts or more whose last part is lower case (a host, a package:
    # ``proxy.cse.cuhk.edu.hk``, ``com.android.systemui``), or of two with a port; a class or a
    # constant (``java.sql.SQLException``, ``android.intent.action.SCREEN_ON``) names the statement
    (r"\b[A-Za-z_][\w-]*(?:(?:\.[\w-]+)+\.[a-z0-9][\w-]*(?::\d+)?|\.[\w-]+:\d+)($|[^\w.-])", r"<NAME>\1", "."),
    (r"(^|[^\w.])/(?:[\w.-]+/)*[\w.-]*\d[\w.-]*", r"\1<PATH>", "/"),
    (r"_-?\d+", "_<NUM>", "_"),  # a number joined by ``_`` is an id part (``blk_-1608``, ``rdd_2_0``)
    # 0x-numbers; ids, hashes, long numbers (and the rare 8-letter a-f word)
    (r"\b(?:0[xX][0-9a-fA-F]+|[0-9a-fA-F]{8,})\b", "<HEX>", None),
    # a payload that ends the line takes the brackets that close it along: a logger's length limit
    # cuts exactly these lines (a growing payload), and the cut one must read as the same template
    (r"\{[^{}]*\}[\])>\"'\s]*$", "<JSON>", "{"),
    (r"\{[^{}]*\}", "<JSON>", "{"),
    # a payload cut off by the logger's length limit: token counts of the cut vary, so mask to the end
    (r"\{[^{}]*$", "<JSON>", "{"),
    # a number right after a name and '#' is a source line (logback's ``%C#%L``, as in
    # ``OrderServiceImpl#532``): it names the log statement, so it stays part of the template;
    # after '##' or a digit and '#' (field separators, as in HealthApp) it is still a number
    (r"(^|[^\w#]|[^A-Za-z_]#|^#)[-+]?\d+(?:\.\d+)?(?:ms|us|s|MB|KB|GB)?\b%?", r"\1<NUM>", None),
    # a list of ids or numbers (``[<UUID>:ZhiDa, <UUID>:GaoTieOne]``) is one value: Drain groups by
    # token count, and would split the statement into one template per list length
    (r"<(?:UUID|HEX|NUM|IP)>(?::[\w.-]+)?(?:, ?<(?:UUID|HEX|NUM|IP)>(?::[\w.-]+)?)+", "<LIST>", ","),
]
DEFAULT_MASKS: list[list[str]] = [[pattern, token] for pattern, token, _ in _BUILT_IN]
MASK_NEEDLES: dict[str, str] = {pattern: needle for pattern, _, needle in _BUILT_IN if needle}
UNMATCHED = -1
PARALLEL_MASK_ROWS = 4_000


Parser = Literal["shapes", "drain"]
PARSERS: tuple[str, ...] = ("shapes", "drain")


class TemplateMiner:
    """An online template parser behind a vectorised front end.

    Args:
        masks: ``[regex, token]`` pairs applied in order before parsing.
        parser: ``shapes`` (default: no per-source settings) or ``drain``.
        sim_th: Drain similarity threshold (``drain`` only).
        depth: Drain parse-tree depth (``drain`` only).
        max_children: Drain max children per node (``drain`` only).
        numeric_tokens: route tokens that contain a digit through Drain's wildcard branch, as the
            original Drain does (drain3's ``parametrize_numeric_tokens``; ``drain`` only).
        min_values: distinct words at one position that make it a variable (``shapes`` only).
        min_constants: words the rest of a line must hold for that count (``shapes`` only).
    """

    def __init__(self, masks: list[list[str]] | None = None, parser: Parser = "shapes", sim_th: float = 0.4,
                 depth: int = 4, max_children: int = 100, numeric_tokens: bool = False, min_values: int = 5,
                 min_constants: int = 2) -> None:
        if parser not in PARSERS:
            raise ValueError(f"unknown template parser {parser!r} (shapes or drain)")
        self.masks = DEFAULT_MASKS if masks is None else masks
        self.parser = parser
        self._settings = {"sim_th": sim_th, "depth": depth, "max_children": max_children,
                          "numeric_tokens": numeric_tokens, "min_values": min_values, "min_constants": min_constants}
        if parser == "shapes":
            self._shapes = ShapeParser(min_values=min_values, min_constants=min_constants)
            return
        from drain3 import TemplateMiner as Drain3Miner
        from drain3.template_miner_config import TemplateMinerConfig

        from detectors.logs.drain_tree import prefix_tree_drain

        config = TemplateMinerConfig()
        config.drain_sim_th, config.drain_depth, config.drain_max_children = sim_th, depth, max_children
        config.masking_instructions = []  # masking is done here, vectorised
        config.parametrize_numeric_tokens = numeric_tokens
        self._config = config
        self._miner = Drain3Miner(config=config)
        self._miner.drain = prefix_tree_drain(config)

    def mask(self, lines: pd.Series) -> pd.Series:
        """Apply every mask to every line (pyarrow's vectorised RE2 where the pattern allows).

        Large inputs are cut into one slice per CPU and masked in threads: pyarrow's regex kernels
        release the GIL, and the slices are put back in order, so the result does not change.
        """
        lines = lines.astype("string[pyarrow]")
        workers = min(os.cpu_count() or 1, 8)
        if workers == 1 or len(lines) < PARALLEL_MASK_ROWS:
            return self._mask_slice(lines)
        bounds = np.linspace(0, len(lines), workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(self._mask_slice, [lines.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]))
        return pd.concat(parts)

    def _mask_slice(self, lines: pd.Series) -> pd.Series:
        import pyarrow as pa
        import pyarrow.compute as pc

        text = pc.utf8_trim_whitespace(pa.array(lines.array))
        for pattern, token in self.masks:
            needle = MASK_NEEDLES.get(pattern)
            if needle is None:
                text = _replace(text, pattern, token)
                continue
            # a built-in mask that needs a literal ("://", "{") runs only on the lines holding it
            holds = pc.match_substring(text, needle)
            count = pc.sum(holds).as_py() or 0
            if count > len(text) // 2:  # filtering costs more than it saves
                text = _replace(text, pattern, token)
            elif count:
                text = pc.replace_with_mask(text, holds, _replace(pc.filter(text, holds), pattern, token))
        return pd.Series(text, index=lines.index, dtype="string[pyarrow]")

    def distinct(self, lines: pd.Series) -> tuple[np.ndarray, pd.Index]:
        """Codes mapping each line to its distinct masked form, in order of first appearance
        (masking runs on distinct raw lines)."""
        raw_codes, raw_unique = pd.factorize(lines.astype("string[pyarrow]"), use_na_sentinel=False)
        masked = self.mask(pd.Series(raw_unique, dtype="string[pyarrow]").fillna(""))
        masked_codes, masked_unique = pd.factorize(masked, use_na_sentinel=False)
        return masked_codes[raw_codes], pd.Index(masked_unique)

    def fit(self, lines: pd.Series) -> np.ndarray:
        """Learn templates from ``lines``; returns each line's template id."""
        codes, distinct = self.distinct(lines)
        return self.learn(distinct)[codes]

    def learn(self, masked: pd.Index | list[str]) -> np.ndarray:
        """Learn templates from distinct masked lines, in the order given; returns each one's template id.

        The parsers see nothing but these texts and their order, so two sets of lines with the same
        distinct masked texts in the same order learn the same templates: what lets a fit by parts
        (one service's lines per part, :mod:`detectors.logs.log_templates`) pool the parts'
        texts and learn once.
        """
        texts = pd.Index(masked).astype(str)
        if self.parser == "shapes":
            learn = self._shapes.learn
            ids = np.array([learn(*line_shape(m)) for m in texts], dtype=np.int64)
            # a later line can merge two templates: each early id resolves to its template's id
            find = self._shapes.find
            return np.array([find(i) for i in ids], dtype=np.int64)
        # drain3's Drain directly: its TemplateMiner wrapper would re-mask (nothing to do here), profile,
        # and build a result dict with the template text on every call
        learn = self._miner.drain.add_log_message
        # a later line can widen an earlier cluster; ids stay stable, so map through ids directly
        return np.array([learn(m)[0].cluster_id for m in texts], dtype=np.int64)

    def match(self, lines: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Template id per line without learning (``UNMATCHED`` for none), plus the masked line."""
        codes, distinct = self.distinct(lines)
        texts = distinct.astype(str)
        if self.parser == "shapes":
            lookup = self._shapes.match
            found = (lookup(line_shape(m)[0]) for m in texts)
            ids = np.array([UNMATCHED if i is None else i for i in found], dtype=np.int64)
        else:
            drain = self._miner.drain.match
            ids = np.array([_cluster_id(drain(m, "fallback")) for m in texts], dtype=np.int64)
        return ids[codes], distinct.to_numpy(dtype=object)[codes]

    def labels(self, lines: pd.Series) -> np.ndarray:
        """A label per line without learning: the template id as text, or ``new:<template>``.

        Lines no learned template matches are grouped by a scratch parser with the same settings, so a
        new kind of line counts as one new template, not one per distinct masked text.
        """
        ids, masked = self.match(lines)
        labels = ids.astype(str).astype(object)
        unmatched = ids == UNMATCHED
        if unmatched.any():
            scratch = TemplateMiner(masks=[], parser=self.parser, **self._settings)
            new_ids = scratch.fit(pd.Series(masked[unmatched]))
            text = scratch.templates()
            labels[unmatched] = ["new:" + text[i] for i in new_ids]
        return labels

    def templates(self) -> dict[int, str]:
        """Template id -> text, every variable written ``<*>``."""
        if self.parser == "shapes":
            return self._shapes.templates()
        return {c.cluster_id: KIND_TOKEN.sub(WILDCARD, c.get_template()) for c in self._miner.drain.clusters}

    def marked_templates(self) -> dict[int, str]:
        """Template id -> text with each value written as its kind (``<NUM>``, ``<IP>``, ``<WORD>``...),
        the form of a masked line: for consumers that read the kinds as words (``teg``'s bag of tokens)."""
        if self.parser == "drain":
            return {c.cluster_id: c.get_template() for c in self._miner.drain.clusters}
        kinds = self.parameter_kinds()
        return {i: _mark_values(text, kinds[i]) for i, text in self.templates().items()}

    def parameter_kinds(self) -> dict[int, list[str]]:
        """Template id -> the kind of each ``<*>`` in its text (``NUM``, ``IP``, ``HEX``, ..., ``WORD``)."""
        if self.parser == "shapes":
            return self._shapes.parameter_kinds()
        return {c.cluster_id: [m.group(1) or "WORD" for m in _DRAIN_VALUE.finditer(c.get_template())]
                for c in self._miner.drain.clusters}

    def save(self, file: Path) -> None:
        """JSON: the shape parser's state, or Drain3's own snapshot (jsonpickle of the Drain state)."""
        if self.parser == "shapes":
            file.write_text(json.dumps({"parser": "shapes", "state": self._shapes.state()}))
            return
        import jsonpickle

        file.write_text(jsonpickle.dumps(self._miner.drain, keys=True))

    def load(self, file: Path) -> None:
        text = file.read_text()
        if self.parser == "shapes":
            saved = json.loads(text)
            if not isinstance(saved, dict) or saved.get("parser") != "shapes":
                raise ValueError(f"{file}: not a saved shapes template parser (was it saved with parser: drain?)")
            self._shapes = ShapeParser.from_state(saved["state"])
            return
        import jsonpickle

        drain = jsonpickle.loads(text, keys=True)
        if len(drain.id_to_cluster) > 0 and isinstance(next(iter(drain.id_to_cluster.keys())), str):
            drain.id_to_cluster = {int(k): v for k, v in drain.id_to_cluster.items()}
        self._miner.drain = drain


def first_seen(miner: TemplateMiner, logs: pd.DataFrame) -> pd.DataFrame:
    """Each distinct masked line of ``logs`` (``text``) and the time it first appears (``first``):
    what one part of a fit sends for :func:`learn_pooled`, a few rows per statement, not the lines."""
    codes, distinct = miner.distinct(logs["message"])
    first = pd.Series(logs["timestamp"].to_numpy()).groupby(codes).min()
    return pd.DataFrame({"text": distinct.astype(str), "first": first.to_numpy()})


def learn_pooled(miner: TemplateMiner, parts: list[pd.DataFrame]) -> dict[str, int]:
    """Learn from every part's :func:`first_seen` table at once, each distinct masked line in order of
    its first appearance (ties by text); returns masked text -> template id.

    The parser sees nothing but those texts and their order (:meth:`TemplateMiner.learn`), so the
    state is the one a single pass over all lines in time order reaches, whatever the parts (one
    per service on a Dask cluster, or one) and whatever the order of rows within a file.
    """
    texts = pd.concat(parts, ignore_index=True).groupby("text", sort=False)["first"].min()
    order = texts.reset_index().sort_values(["first", "text"], kind="stable")["text"]
    return dict(zip(order, miner.learn(order.tolist()).tolist(), strict=True))


_DRAIN_VALUE = re.compile(r"<\*>|<([A-Z]+)>")


def _mark_values(text: str, kinds: list[str]) -> str:
    """``<*>`` after ``<*>`` written as the next kind (``WORD`` when the kinds run out)."""
    parts = text.split(WILDCARD)
    marks = [f"<{kinds[i] if i < len(kinds) else WORD_KIND}>" for i in range(len(parts) - 1)]
    return "".join(p + m for p, m in zip(parts, marks + [""], strict=True))


def _replace(text: Any, pattern: str, token: str) -> Any:
    """One mask over a pyarrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:  # pyarrow's RE2 kernel directly: pandas' str.replace costs about 5x more on long lines
        return pc.replace_substring_regex(text, pattern=pattern, replacement=token)
    except pa.ArrowInvalid:  # not RE2 syntax (look-arounds): Python's re, through pandas
        replaced = pd.Series(text, dtype="string[pyarrow]").str.replace(pattern, token, regex=True)
        return pa.array(replaced.array)


def _cluster_id(cluster: object) -> int:
    return UNMATCHED if cluster is None else int(cluster.cluster_id)


class SavedMinerMixin:
    """Persistence of an optional fitted ``miner_`` (a :class:`TemplateMiner`, or None where the
    detector fitted without log lines): left out of the joblib state and saved as
    ``templates.json`` beside it. Mixed in before ``Detector`` by the trace detectors that read logs."""

    def learned_state(self) -> dict:
        state = super().learned_state()  # type: ignore[misc]
        state.pop("miner_", None)
        return state

    def _save_state(self, root: Path) -> None:
        super()._save_state(root)  # type: ignore[misc]
        if getattr(self, "miner_", None) is not None:
            self.miner_.save(root / "templates.json")  # type: ignore[attr-defined]

    def _load_state(self, root: Path) -> None:
        super()._load_state(root)  # type: ignore[misc]
        self.miner_ = None
        if (root / "templates.json").is_file():
            self.miner_ = TemplateMiner()
            self.miner_.load(root / "templates.json")
