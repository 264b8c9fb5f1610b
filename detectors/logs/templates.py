"""Log template mining: vectorised pre-masking, one Drain3 call per distinct masked line.

Drain (He et al., ICWS 2017) via the drain3 package, with the paper's parse-tree routing
(:mod:`detectors.logs.drain_tree`). Many lines repeat once their variable parts
(ids, numbers, IPs) are masked, so lines are masked column-wise with pandas, de-duplicated, and
only the distinct masked lines go through Drain3; results are mapped back by index. Learning
(``add_log_message``) is kept apart from matching (``match``), as in Drain3 itself.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

# RE2-compatible (no look-arounds), so pandas runs them in pyarrow's vectorised regex engine; a
# user mask with look-arounds still works, through Python's re, only slower.
DEFAULT_MASKS: list[list[str]] = [
    [r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>"],
    [r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>"],
    [r"\b[0-9a-fA-F]{8,}\b", "<HEX>"],  # ids, hashes, long numbers (and the rare 8-letter a-f word)
    [r"(^|[^\w.])/(?:[\w.-]+/)*[\w.-]*\d[\w.-]*", r"\1<PATH>"],
    # a payload that ends the line takes the brackets that close it along: a logger's length limit
    # cuts exactly these lines (a growing payload), and the cut one must read as the same template
    [r"\{[^{}]*\}[\])>\"'\s]*$", "<JSON>"],
    [r"\{[^{}]*\}", "<JSON>"],
    # a payload cut off by the logger's length limit: token counts of the cut vary, so mask to the end
    [r"\{[^{}]*$", "<JSON>"],
    # a number right after a name and '#' is a source line (logback's ``%C#%L``, as in
    # ``OrderServiceImpl#532``): it names the log statement, so it stays part of the template;
    # after '##' or a digit and '#' (field separators, as in HealthApp) it is still a number
    [r"(^|[^\w#]|[^A-Za-z_]#|^#)[-+]?\d+(?:\.\d+)?(?:ms|us|s|MB|KB|GB)?\b%?", r"\1<NUM>"],
    # a list of ids or numbers (``[<UUID>:ZhiDa, <UUID>:GaoTieOne]``) is one value: Drain groups by
    # token count, and would split the statement into one template per list length
    [r"<(?:UUID|HEX|NUM|IP)>(?::[\w.-]+)?(?:, ?<(?:UUID|HEX|NUM|IP)>(?::[\w.-]+)?)+", "<LIST>"],
]
UNMATCHED = -1
PARALLEL_MASK_ROWS = 4_000


class TemplateMiner:
    """Drain3 behind a vectorised front end.

    Args:
        masks: ``[regex, token]`` pairs applied in order before Drain.
        sim_th: Drain similarity threshold.
        depth: Drain parse-tree depth.
        max_children: Drain max children per node.
        numeric_tokens: route tokens that contain a digit through Drain's wildcard branch, as the
            original Drain does (drain3's ``parametrize_numeric_tokens``); off when masks handle numbers.
    """

    def __init__(self, masks: list[list[str]] | None = None, sim_th: float = 0.4, depth: int = 4,
                 max_children: int = 100, numeric_tokens: bool = False) -> None:
        from drain3 import TemplateMiner as Drain3Miner
        from drain3.template_miner_config import TemplateMinerConfig

        from detectors.logs.drain_tree import prefix_tree_drain

        self.masks = DEFAULT_MASKS if masks is None else masks
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
            try:  # pyarrow's RE2 kernel directly: pandas' str.replace costs about 5x more on long lines
                text = pc.replace_substring_regex(text, pattern=pattern, replacement=token)
            except pa.ArrowInvalid:  # not RE2 syntax (look-arounds): Python's re, through pandas
                replaced = pd.Series(text, dtype="string[pyarrow]").str.replace(pattern, token, regex=True)
                text = pa.array(replaced.array)
        return pd.Series(text, index=lines.index, dtype="string[pyarrow]")

    def _distinct(self, lines: pd.Series) -> tuple[np.ndarray, pd.Index]:
        """Codes mapping each line to its distinct masked form (masking runs on distinct raw lines)."""
        raw_codes, raw_unique = pd.factorize(lines.astype("string[pyarrow]"), use_na_sentinel=False)
        masked = self.mask(pd.Series(raw_unique, dtype="string[pyarrow]").fillna(""))
        masked_codes, masked_unique = pd.factorize(masked, use_na_sentinel=False)
        return masked_codes[raw_codes], pd.Index(masked_unique)

    def fit(self, lines: pd.Series) -> np.ndarray:
        """Learn templates from ``lines``; returns each line's cluster id."""
        codes, distinct = self._distinct(lines)
        # drain3's Drain directly: its TemplateMiner wrapper would re-mask (nothing to do here), profile,
        # and build a result dict with the template text on every call
        learn = self._miner.drain.add_log_message
        ids = np.array([learn(m)[0].cluster_id for m in distinct.astype(str)], dtype=np.int64)
        # a later line can widen an earlier cluster; ids stay stable, so map through ids directly
        return ids[codes]

    def match(self, lines: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id per line without learning (``UNMATCHED`` for none), plus the masked line."""
        codes, distinct = self._distinct(lines)
        lookup = self._miner.drain.match
        ids = np.array([_cluster_id(lookup(m, "fallback")) for m in distinct.astype(str)], dtype=np.int64)
        return ids[codes], distinct.to_numpy(dtype=object)[codes]

    def labels(self, lines: pd.Series) -> np.ndarray:
        """A label per line without learning: the cluster id as text, or ``new:<template>``.

        Lines no learned template matches are grouped by a scratch Drain with the same settings, so a
        new kind of line counts as one new template, not one per distinct masked text.
        """
        ids, masked = self.match(lines)
        labels = ids.astype(str).astype(object)
        unmatched = ids == UNMATCHED
        if unmatched.any():
            scratch = TemplateMiner(masks=[], sim_th=self._config.drain_sim_th, depth=self._config.drain_depth,
                                    max_children=self._config.drain_max_children,
                                    numeric_tokens=self._config.parametrize_numeric_tokens)
            new_ids = scratch.fit(pd.Series(masked[unmatched]))
            text = scratch.templates()
            labels[unmatched] = ["new:" + text[i] for i in new_ids]
        return labels

    def templates(self) -> dict[int, str]:
        """Cluster id -> template text."""
        return {c.cluster_id: c.get_template() for c in self._miner.drain.clusters}

    def save(self, file: Path) -> None:
        """Drain3's own snapshot format (jsonpickle of the Drain state)."""
        import jsonpickle

        file.write_text(jsonpickle.dumps(self._miner.drain, keys=True))

    def load(self, file: Path) -> None:
        import jsonpickle

        drain = jsonpickle.loads(file.read_text(), keys=True)
        if len(drain.id_to_cluster) > 0 and isinstance(next(iter(drain.id_to_cluster.keys())), str):
            drain.id_to_cluster = {int(k): v for k, v in drain.id_to_cluster.items()}
        self._miner.drain = drain


def _cluster_id(cluster: object) -> int:
    return UNMATCHED if cluster is None else int(cluster.cluster_id)
