"""Template mining: masks, learning kept apart from matching, and the same groups as plain drain3."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.logs_loghub import plain_drain3, same_grouping
from detectors.logs.templates import DEFAULT_MASKS, UNMATCHED, TemplateMiner
from melt.evaluation.scoring import grouping_accuracy


def test_default_masks_cover_the_usual_variable_parts() -> None:
    lines = pd.Series([
        "took 12.5ms for /api/v1/users/123 id=deadbeef01 uuid 123e4567-e89b-12d3-a456-426614174000 ip 10.0.0.1:8080 at 55%",
        'payload {"a": 1} user:4411 hit=true',
        "Handling GET /api/order/get request id=4f1c2b3a9d8e7f60 user=17 completed in 3.2 ms",
    ])
    assert TemplateMiner().mask(lines).tolist() == [
        "took <NUM> for <PATH> id=<HEX> uuid <UUID> ip <IP> at <NUM>",
        "payload <JSON> user:<NUM> hit=true",
        "Handling GET /api/order/get request id=<HEX> user=<NUM> completed in <NUM> ms",
    ]


def test_a_payload_cut_by_the_loggers_length_limit_reads_as_the_whole_one() -> None:
    """A growing payload (a list of sold tickets) crosses the logger's length limit one day: the cut
    line loses the payload's end and the brackets that closed the line, but not its template."""
    whole = "[getSoldTickets][Left ticket info][info is: LeftTicketInfo{soldTickets=[Ticket(seatNo=1), Ticket(seatNo=2)]}]"
    wrapped = "[distributeSeat][info is : Response(status=1, msg=Success, data=LeftTicketInfo{soldTickets=[]})]"
    masked = TemplateMiner().mask(pd.Series([whole, whole[:70], wrapped, wrapped[:80]])).tolist()
    assert masked[0] == masked[1] == "[getSoldTickets][Left ticket info][info is: LeftTicketInfo<JSON>"
    assert masked[2] == masked[3]
    assert TemplateMiner().mask(pd.Series(["sent {a=1} to queue"])).tolist() == ["sent <JSON> to queue"]


def test_a_list_of_ids_is_one_value_whatever_its_length() -> None:
    """Drain groups by token count: unmasked, each list length would be a template of its own, and a
    line that vanishes from most calls would vanish from several templates, each under half of them."""
    ids = [f"a5f3c2d1-1111-2222-3333-44445555666{i}:{kind}" for i, kind in enumerate(["ZhiDa", "GaoTieOne", "DongCheOne"])]
    lines = pd.Series([f"[Query price][routeId and Train Type: [{', '.join(ids[:n])}]]" for n in (2, 3, 2, 3)]
                      + ["Route IDs: [7, 12, 30]", "took 12 ms, 3 retries", "x=1, y=2"])
    masked = TemplateMiner().mask(lines).tolist()
    assert masked[:4] == ["[Query price][routeId and Train Type: [<LIST>]]"] * 4
    assert masked[4:] == ["Route IDs: [<LIST>]", "took <NUM> ms, <NUM> retries", "x=<NUM>, y=<NUM>"]


def test_matching_never_changes_the_fitted_miner() -> None:
    miner = TemplateMiner()
    miner.fit(pd.Series([f"Connected to db in {i} ms" for i in range(50)] + ["Cache miss for key user:7"] * 5))
    before = miner.templates()
    ids, masked = miner.match(pd.Series(["Connected to db in 99 ms", "Totally new kind of line here"]))
    assert ids[0] != UNMATCHED and ids[1] == UNMATCHED
    assert masked[1] == "Totally new kind of line here"
    assert miner.templates() == before


@pytest.mark.parametrize("numeric", [False, True])
def test_fast_path_groups_exactly_like_plain_drain3(tiny_bundle, numeric) -> None:
    lines = tiny_bundle.frame("logs")["message"].head(5000)
    fast = TemplateMiner(numeric_tokens=numeric).fit(lines)
    plain = plain_drain3(lines.astype(str).tolist(), DEFAULT_MASKS, 0.4, 4, numeric)
    assert same_grouping(fast, plain)


def test_grouping_accuracy_counts_only_exact_groups() -> None:
    truth = pd.Series(["A", "A", "B", "B", "C"])
    assert grouping_accuracy(truth, pd.Series([1, 1, 2, 2, 3]).to_numpy()) == 1.0
    assert grouping_accuracy(truth, pd.Series([1, 1, 2, 2, 2]).to_numpy()) == pytest.approx(0.4)  # B and C merged
    assert grouping_accuracy(truth, pd.Series([1, 2, 3, 3, 4]).to_numpy()) == pytest.approx(0.6)  # A split: only B's and C's lines count


def test_parse_tree_routes_on_the_last_token_like_drain() -> None:
    """Drain routes on every token up to its depth; drain3 skips a line's last token, which merges
    short lines that differ only there (the loghub Android gap)."""
    lines = pd.Series(["Reset brightness", "Reset volume", "Reset brightness"])
    ids = TemplateMiner(masks=[], sim_th=0.2, depth=6).fit(lines)
    assert ids[0] == ids[2] and ids[0] != ids[1]
    deep = TemplateMiner(masks=[], sim_th=0.2, depth=3).fit(pd.Series(["a b c d", "a x y z"]))
    assert deep[0] == deep[1]  # beyond the depth, similarity decides (1/4 >= 0.2)
