"""The demo's pipeline figures, from an event log's publish times."""

from __future__ import annotations

from serve.demo_build import pipeline_figures


def test_a_chain_built_one_component_at_a_time_has_a_parallelism_of_one() -> None:
    timeline = [
        (10.0, "slot.building", {"slot": "db"}),
        (14.0, "merge.accepted", {"component": "db"}),
        (15.0, "component.phase", {"component": "db", "phase": "done"}),
        (15.0, "slot.building", {"slot": "web~minimal"}),
        (15.5, "slot.building", {"slot": "web~polished"}),
        (24.0, "merge.accepted", {"component": "web"}),
        (25.0, "component.phase", {"component": "web", "phase": "done"}),
    ]
    assert pipeline_figures(timeline) == {"build_phase_s": 14.0, "sum_component_s": 15.0, "parallelism": 1.07}


def test_components_built_together_count_their_overlap() -> None:
    timeline = [
        (0.0, "slot.building", {"slot": "db"}),
        (0.0, "slot.building", {"slot": "api"}),
        (5.0, "merge.accepted", {}),
        (5.0, "component.phase", {"component": "db", "phase": "done"}),
        (6.0, "merge.accepted", {}),
        (6.0, "component.phase", {"component": "api", "phase": "done"}),
    ]
    assert pipeline_figures(timeline)["parallelism"] == round(11 / 6, 2)


def test_a_build_that_never_merged_has_no_figures() -> None:
    assert pipeline_figures([(1.0, "slot.building", {"slot": "db"})]) == {
        "build_phase_s": None,
        "sum_component_s": None,
        "parallelism": None,
    }
