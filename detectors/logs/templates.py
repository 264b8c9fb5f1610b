"""Log template mining: vectorised pre-masking, one Drain3 call per distinct masked line.

Drain (He et al., ICWS 2017) via the drain3 package. Many lines repeat once their variable parts
(ids, numbers, IPs) are masked, so lines are masked column-wise with pandas, de-duplicated, and
only the distinct masked lines go through Drain3; results are mapped back by index. Learning
(``add_log_message``) is kept apart from matching (``match``), as in Drain3 itself.
"""

from __future__ import annotations

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
    [r"\{[^{}]*\}", "<JSON>"],
    [r"\b[-+]?\d+(?:\.\d+)?(?:ms|us|s|MB|KB|GB)?\b%?", "<NUM>"],
]
UNMATCHED = -1


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

        self.masks = DEFAULT_MASKS if masks is None else masks
        config = TemplateMinerConfig()
        config.drain_sim_th, config.drain_depth, config.drain_max_children = sim_th, depth, max_children
        config.masking_instructions = []  # masking is done here, vectorised
        config.parametrize_numeric_tokens = numeric_tokens
        self._config = config
        self._miner = Drain3Miner(config=config)

    def mask(self, lines: pd.Series) -> pd.Series:
        """Apply every mask to every line (pyarrow's vectorised RE2 where the pattern allows)."""
        out = lines.astype("string[pyarrow]").str.strip()
        for pattern, token in self.masks:
            out = out.str.replace(pattern, token, regex=True)
        return out

    def _distinct(self, lines: pd.Series) -> tuple[np.ndarray, pd.Index]:
        """Codes mapping each line to its distinct masked form (masking runs on distinct raw lines)."""
        raw_codes, raw_unique = pd.factorize(lines.astype("string[pyarrow]"), use_na_sentinel=False)
        masked = self.mask(pd.Series(raw_unique, dtype="string[pyarrow]").fillna(""))
        masked_codes, masked_unique = pd.factorize(masked, use_na_sentinel=False)
        return masked_codes[raw_codes], pd.Index(masked_unique)

    def fit(self, lines: pd.Series) -> np.ndarray:
        """Learn templates from ``lines``; returns each line's cluster id."""
        codes, distinct = self._distinct(lines)
        ids = np.array([self._miner.add_log_message(str(m))["cluster_id"] for m in distinct], dtype=np.int64)
        # a later line can widen an earlier cluster; ids stay stable, so map through ids directly
        return ids[codes]

    def match(self, lines: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id per line without learning (``UNMATCHED`` for none), plus the masked line."""
        codes, distinct = self._distinct(lines)
        ids = np.array([_cluster_id(self._miner.match(str(m), full_search_strategy="fallback")) for m in distinct],
                       dtype=np.int64)
        return ids[codes], distinct.to_numpy(dtype=object)[codes]

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
