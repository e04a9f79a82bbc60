"""The demo's pipeline figures, from an event log's publish times."""

from __future__ import annotations

from serve.demo_build import pipeline_breakdown, pipeline_figures, pools_for


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
    assert pipeline_figures(timeline) == {
        "build_phase_s": 14.0,
        "sum_component_s": 15.0,
        "parallelism": 1.07,
        "per_component_overhead_s": 7.5,  # no busy.report: all of each pipeline counts as overhead
    }


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
        "per_component_overhead_s": None,
    }


def busy(component: str, source: str, *intervals: tuple[float, float]) -> tuple[float, str, dict[str, object]]:
    return (intervals[-1][1], "busy.report", {"component": component, "source": source, "intervals": list(intervals)})


def test_overhead_is_pipeline_time_in_which_no_command_and_no_model_call_ran() -> None:
    timeline = [
        (10.0, "slot.building", {"slot": "db"}),
        busy("db", "model", (10.0, 11.0), (12.0, 13.0)),
        busy("db", "sandbox", (11.0, 12.5)),  # overlaps the model's second call: counted once
        busy("db", "gate", (16.0, 17.0)),
        (17.0, "merge.accepted", {"component": "db", "changed": []}),
        (18.0, "component.phase", {"component": "db", "phase": "done"}),
    ]
    assert pipeline_figures(timeline)["per_component_overhead_s"] == 8.0 - 4.0


def test_a_tournament_counts_its_candidates_work_once_under_its_component() -> None:
    timeline = [
        (0.0, "slot.building", {"slot": "web~minimal"}),
        (0.0, "slot.building", {"slot": "web~polished"}),
        busy("web.minimal", "model", (0.0, 2.0)),
        busy("web.polished", "model", (1.0, 3.0)),
        busy("web~minimal", "sandbox", (2.0, 4.0), (20.0, 30.0)),  # outside the pipeline: not counted
        (9.0, "merge.accepted", {"component": "web"}),
        (10.0, "component.phase", {"component": "web", "phase": "done"}),
    ]
    assert pipeline_figures(timeline)["per_component_overhead_s"] == 10.0 - 4.0


def test_the_breakdown_splits_a_pipeline_at_its_milestones_with_the_busy_share_of_each_step() -> None:
    timeline = [
        (0.0, "slot.building", {"slot": "db"}),
        (2.0, "team.started", {"component": "db"}),
        busy("db", "sandbox", (3.0, 4.0)),
        (5.0, "slot.built", {"slot": "db"}),
        (6.0, "merge.accepted", {"component": "db"}),  # the run's echo: no milestone
        (6.0, "merge.accepted", {"component": "db", "changed": ["a.py"]}),
        (7.0, "component.phase", {"component": "db", "phase": "done"}),
    ]
    steps = pipeline_breakdown(timeline)["db"]
    assert [s["step"] for s in steps] == [
        "slot.building → team.started",
        "team.started → slot.built",
        "slot.built → merge.accepted",
        "merge.accepted → component.phase done",
    ]
    assert [(s["s"], s["busy_s"], s["overhead_s"]) for s in steps] == [
        (2.0, 0.0, 2.0),
        (3.0, 1.0, 2.0),
        (1.0, 0.0, 1.0),
        (1.0, 0.0, 1.0),
    ]


def test_the_demo_keeps_one_build_of_its_example_warm_and_does_not_refill() -> None:
    pools = pools_for("todo-fullstack")  # database, backend, and a 2-candidate frontend tournament
    assert (pools.proxies, pools.teams, pools.swarms) == (4 + 2, 4, 4)  # + the gate's and the preview's proxies
    assert pools.agents == 4 * 3 and not pools.refill
