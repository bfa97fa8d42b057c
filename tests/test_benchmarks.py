"""Smoke tests of the benchmark code (issue 7) on tiny settings.

They check that every section runs end to end and renders well-formed Markdown
tables with the expected rows. They assert nothing about speed or accuracy:
the figures come from ``make bench`` on a real budget, not from here.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchmarks import intervals as intervals_section
from benchmarks import recovery, run, training
from benchmarks.common import ChildResult, fmt_rate, growth_exponent, md_table, per_size_bounds, run_child, wilson
from benchmarks.oracle import OracleSettings


def tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table in ``markdown`` as rows of cells (header first); fails on a malformed one."""
    found, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            assert line.rstrip().endswith("|"), line
            current.append([cell.strip() for cell in line.strip()[1:-1].split(" | ")])
        elif current:
            header, separator, *body = current
            assert all(set(cell) <= set(":-") and "---" in cell for cell in separator), separator
            assert len(separator) == len(header)
            for row in body:
                assert len(row) == len(header), (header, row)
            found.append([header, *body])
            current = []
    return found


def first_column(table: list[list[str]]) -> list[str]:
    return [row[0] for row in table[1:]]


def test_markdown_helpers():
    text = md_table(["a", "b"], [[1, "x|y"], [2, 3]])
    (table,) = tables(text)
    assert table == [["a", "b"], ["1", "x\\|y"], ["2", "3"]]
    with pytest.raises(ValueError):
        md_table(["a", "b"], [[1]])
    lo, hi = wilson(0, 20)
    assert lo == 0 and 0.1 < hi < 0.2
    assert fmt_rate(1, 10).startswith("1/10 = 10%")
    assert growth_exponent([10, 100, 1000], [1, 10, 100]) == pytest.approx(1.0)


TINY_RECOVERY = recovery.Settings(
    scenarios=("null", "strong", "ushape", "sharp"),  # one of each: without and with a subgroup, and both tests-only null designs
    sizes=(80,),
    # null: one trial of each kind (work-up with the default test, default and permutation tests, cheap tests only)
    trials=(("null", (3,)), ("strong", (1,)), ("ushape", (1,)), ("sharp", (1,))),
    bootstrap_trials=(("null", (1,)), ("strong", (1,)), ("ushape", (1,)), ("sharp", (1,))),  # a work-up trial runs it anyway
    permutation_trials=(("null", (2,)), ("strong", (1,)), ("ushape", (1,))),
    full_trials=(("null", (1,)), ("strong", (1,))),
    replicates=2,
    permutations=1,
    population=150,
    bootstrap_models=5,
    cv_folds=2,
    cv_repeats=1,
    forest_trees=8,
    rate_bootstrap=20,
    workers=1,
    oracle=OracleSettings(patients=2000, n_estimators=20, learning_rate=0.2, min_child_samples=20, early_stopping=5, threads=1),
    candidate_overrides={
        **recovery.QUICK.candidate_overrides,
        "bcf": {"num_gfr": 2, "num_mcmc": 20, "cv_gfr": 2, "cv_mcmc": 10, "mu_trees": 20, "tau_trees": 10},
    },
)


def test_the_level_criterion_is_also_given_per_size_with_the_null_designs_pooled():
    cells = [("null", 99, 1, 59), ("ushape", 99, 2, 59), ("sharp", 99, 2, 58), ("null", 300, 4, 59), ("ushape", 300, 5, 59)]
    bounds = [(d, n, k, R, wilson(k, R)[1]) for d, n, k, R in cells]
    text = per_size_bounds(bounds, 0.05, recovery.LEVEL_BOUND)
    assert "n = 99: 5/176 = 2.8% (upper 6.5%, met)" in text  # two of its cells miss it alone (upper 11.5%, 11.7%)
    assert "n = 300: 9/118 = 7.6% (upper 13.9%, not met)" in text
    assert per_size_bounds(bounds[:1], 0.05, recovery.LEVEL_BOUND) == ""  # one design: the per-cell sentence says it all


def test_a_campaign_cut_short_lists_its_design_as_planned_not_as_run():
    assert recovery.QUICK.describe()[0].startswith("- Simulated trials: `null` ")
    assert recovery.QUICK.describe(cut_short=True)[0].startswith("- Planned trials (not all ran: the tables count those that did): `null` ")


def test_null_designs_keep_the_trial_and_redraw_only_the_outcome():
    F = pd.DataFrame({recovery.USHAPE_FEATURE: np.linspace(-3, 3, 4000)})
    t = np.tile([0, 1], 2000)
    y = np.r_[np.ones(1000, int), np.zeros(3000, int)]
    sharp = recovery.null_design_outcome("sharp", F, t, y, 1, 0)
    assert sharp.sum() == y.sum() and not np.array_equal(sharp, y)  # the same responders, shuffled across patients and arms
    ushape = recovery.null_design_outcome("ushape", F, t, y, 1, 0)
    edges, middle = np.abs(F[recovery.USHAPE_FEATURE]) > 1.5, np.abs(F[recovery.USHAPE_FEATURE]) < 0.5
    assert ushape[edges].mean() > ushape[middle].mean() + 0.3  # U-shaped prognosis
    assert ushape[t == 1].mean() > ushape[t == 0].mean()  # a constant probit effect on top
    assert np.array_equal(ushape, recovery.null_design_outcome("ushape", F, t, y, 1, 0))
    assert not np.array_equal(ushape, recovery.null_design_outcome("ushape", F, t, y, 1, 1))  # each outcome its own draw


def test_interval_score_is_the_width_plus_the_scaled_misses():
    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([0.1, 0.1, 0.1])
    target = np.array([0.05, -0.1, 0.3])
    # Gneiting & Raftery (2007): width + 2/alpha x distance below / above.
    expected = [0.1, 0.1 + 40 * 0.1, 0.1 + 40 * 0.2]
    assert recovery.interval_score(lower, upper, target, 0.05) == pytest.approx(expected)


def test_interval_criteria_read_every_served_interval_then_the_cate_interval_alone_then_bcf_everywhere():
    from types import SimpleNamespace

    rows = []
    # Cell A: two trials, one served the conditional answer (its interval covers 0.93), one the average (covers 0.40).
    # Cell B: one trial, average answer only. Baselines score worse on the conditional trial, better on the other.
    for outcome, replicate, answer, served, bcf in (("pain", 0, "conditional", 0.93, 0.94), ("pain", 1, "average", 0.40, 0.98),
                                                     ("memory", 0, "average", 0.96, 1.00)):
        for method, coverage, score in (("champion", served, 1.0 if answer == "conditional" else 2.0), ("bcf", bcf, 1.5),
                                        ("trial_average", 0.3, 3.0 if answer == "conditional" else 1.0), ("causal_forest", 0.9, 1.2)):
            rows.append({"kind": "method", "scenario": "final", "n": 300, "outcome": outcome, "replicate": replicate,
                         "method": method, "answer": answer, "coverage_observable": coverage, "interval_score": score, "width": 0.3})
    text = recovery.interval_criteria_markdown(pd.DataFrame(rows), SimpleNamespace(work_up_scenarios=("final",), sizes=(300,)))
    served, conditional, bcf = text.split("\n\n")[:3]
    # Every served interval: cell A means 0.665 (missed), cell B 0.96 (met).
    assert "the served interval covers the observable conditional benefit at 0.90-0.97 in 1 of 2 cells" in served
    assert "`final` n = 300 pain 0.67" in served
    # The CATE interval alone: only cell A's conditional trial, judged against the baselines on that same trial.
    assert "in 1 of 1 cells" in conditional and "`final` n = 300 memory" not in conditional
    assert "trial average (Miettinen-Nurminen), every patient's in 1 of 1 cells" in conditional
    assert "EconML CausalForestDML's in 1 of 1 cells" in conditional
    # BCF in every cell and trial: cell A 0.96 (met), cell B 1.00 (missed).
    assert "BCF's interval" in bcf and "in 1 of 2 cells (not: `final` n = 300 memory 1.00)" in bcf
    # No conditional answer anywhere: said, not left out.
    quiet = pd.DataFrame([r for r in rows if r["answer"] == "average"])
    assert "no trial in this run served the conditional answer" in recovery.interval_criteria_markdown(
        quiet, SimpleNamespace(work_up_scenarios=("final",), sizes=(300,)))


@pytest.mark.slow  # tiny recovery trials: each fits candidates and runs the tests (8-25 s)
def test_recovery_section_renders_every_test_method_and_criterion(tmp_path):
    markdown = recovery.run(quick=True, out_dir=tmp_path, settings=TINY_RECOVERY)
    assert markdown.startswith("## 1. Subgroup recovery")
    assert "allowance" not in markdown.lower()
    assert (tmp_path / "recovery.csv").exists() and (tmp_path / "recovery.parquet").exists()
    assert list((tmp_path / "oracle-cache").glob("oracle-*.joblib")), "the observable oracle is cached"
    assert not list((tmp_path / "oracle-cache").glob("oracle-ushape-*")), "a tests-only design needs no oracle"
    fwer, nominal, calibrated, carry, headline, intervals, by_answer, calibration, criteria, answers, *details, criteria_detail = (
        tables(markdown)
    )
    # What the default test's null trials carry of each statistic: the alternative first, a share only there.
    assert carry[0][:4] == ["design", "n", "outcome", "trials"] and carry[1][0] == "`strong`"
    assert all(row[6] == "—" for row in carry[1:] if row[0] != "`strong`")
    # The product's tests on every null design: the default on one trial each (null: the work-up trial), the permutation test
    # on two null trials and one ushape trial.
    assert [row[:4] for row in fwer[1:]] == [
        ["product default", "`null`", "80", "1"], ["product default", "`ushape`", "80", "1"], ["product default", "`sharp`", "80", "1"],
        *[["product default read at 99 null trials", f"`{design}`", "80", "1"] for design in ("null", "ushape", "sharp")],
        # The option evidence.combination: bonferroni, read from BCF's spread alone and the parametric bootstrap's rows.
        *[["product option `evidence.combination` = `bonferroni`", f"`{design}`", "80", "1"] for design in ("null", "ushape", "sharp")],
        *[["product option `evidence.combination` = `fisher_or_bootstrap` (added after interim figures)", f"`{design}`", "80", "1"]
          for design in ("null", "ushape", "sharp")],
        # Each of the default's two statistics alone, read from the same null trials.
        *[["BCF spread alone (the default until 2026-12-06)", f"`{design}`", "80", "1"] for design in ("null", "ushape", "sharp")],
        *[["prespecified modifiers alone, calibrated", f"`{design}`", "80", "1"] for design in ("null", "ushape", "sharp")],
        ["product `permutation` (earlier default)", "`null`", "80", "2"], ["product `permutation` (earlier default)", "`ushape`", "80", "1"],
    ]
    # The grf-style tests need EconML (the optional bench extra, not installed by `make test`): without it
    # their rows are left out, not faked.
    grf = importlib.util.find_spec("econml") is not None
    shown = [t for t in [*recovery.TESTS, *recovery.COMBINATIONS] if grf or "grf" not in t]
    tests = [recovery._test_label(t) for t in shown]
    assert first_column(nominal) == tests and first_column(calibrated) == tests
    assert nominal[0][2:] == ["null: FWER", "ushape: FWER", "sharp: FWER", "strong: power pain / memory (trials)"]
    assert nominal[1][0].startswith("product default") and nominal[1][2].split(" = ")[0] in ("0/1", "1/1")  # one null trial
    assert nominal[2][2].split(" = ")[0] == nominal[1][2].split(" = ")[0]  # the same null trial, read again at 99
    assert all(row[2].split(" = ")[0].endswith("/1") for row in nominal[3:7])  # the joined tests and each statistic alone: that trial
    assert "/2 = " in nominal[7][2]  # the permutation test ran on two null trials
    cheap = [t for t in recovery.TESTS if t not in recovery.PRODUCT_TESTS and (grf or "grf" not in t)]
    for test, row in zip(cheap, nominal[8 : 8 + len(cheap)], strict=True):
        assert row[0] == recovery._test_label(test)
        # On every trial; the parametric bootstrap only beside the default test (one null trial).
        assert f"/{1 if test == 'composites_parametric' else 3} = " in row[2] and "/1 = " in row[3] and "/1 = " in row[4], row
    labels = [recovery.METHOD_LABELS[m] for m in recovery.METHODS]
    assert first_column(headline) == labels
    assert headline[0][1:] == ["strong / pain", "strong / memory"]
    assert headline[2][1:] == ["1.00", "1.00"]  # the observable oracle is the yardstick
    # The interval table: the served interval and both baselines in every cell, with the answers served.
    assert intervals[0][4:] == ["interval", "covers the observable conditional benefit", "mean width", "mean interval score"]
    cells = [[s, "80", o] for s in ("null", "strong") for o in ("pain", "memory")]
    assert [row[:3] for row in intervals[1:]] == [c for c in cells for _ in recovery.INTERVAL_METHODS]
    assert [row[4] for row in intervals[1:4]] == ["served answer", recovery.METHOD_LABELS["trial_average"], recovery.METHOD_LABELS["causal_forest"]]
    assert all(row[3].split()[0] in recovery.ANSWERS for row in intervals[1:])
    for row in intervals[1:]:
        if row[4] != recovery.METHOD_LABELS["causal_forest"] or grf:
            assert 0 <= float(row[5].split()[0]) <= 1 and float(row[6].split()[0]) > 0 and float(row[7].split()[0]) >= float(row[6].split()[0])
    # Calibration for benefit: both statistics, the job's Wald interval beside the bootstrap, coverage of each trial's own value.
    assert [row[:2] for row in calibration[1:]] == [
        [stat, kind] for stat in ("calibration in the large (observed minus predicted average benefit)", "slope")
        for kind in ("Wald (the job's)", "percentile bootstrap of the same statistic")
    ]
    assert all(" = " in row[2] and float(row[3]) > 0 and float(row[4]) >= float(row[3]) for row in calibration[1:])
    assert "Wald interval of the slope covering its target, by candidate: " in markdown
    assert first_column(criteria)[:-1] == [recovery.SELECTOR_LABELS[s] for s in recovery.SELECTORS]
    assert len(answers) == 1 + 2 * 2 and all(sum(int(c) for c in row[3:6]) == 1 for row in answers[1:])
    assert len(details) == 2
    for detail in details:
        assert [row[2] for row in detail[1:]] == labels * 2  # both outcomes
    assert len(criteria_detail) == 1 + 2 * len(recovery.SELECTORS)
    frame = pd.read_parquet(tmp_path / "recovery.parquet")
    champion = frame[(frame["kind"] == "method") & (frame["method"] == "champion")]
    assert champion["coverage_observable"].between(0, 1).all() and (champion["width"] > 0).all()
    assert champion["answer"].isin(recovery.ANSWERS).all()
    # Every served interval contains the served benefit, for every patient.
    assert (champion["contains_benefit"] == 1.0).all()
    # The interval score is at least the width (misses only add).
    assert (champion["interval_score"] >= champion["width"] - 1e-12).all()
    # An interrupted campaign of the same code and design resumes from its finished trials.
    oracles, cached = recovery.load_oracles(TINY_RECOVERY.work_up_scenarios, TINY_RECOVERY.oracle, tmp_path / "oracle-cache")
    assert cached
    observable = recovery.observable_predictions(oracles, TINY_RECOVERY)
    again = recovery.run_benchmark(TINY_RECOVERY, observable, progress=False, partial=tmp_path / "recovery-partial.jsonl", resume=True)
    assert len(again) == len(frame) and again["resumed"].all()
    # Section 5 renders the same work-up (its own campaign in a real run) without section 1's tests.
    campaign = recovery.Campaign(frame, 1.0, oracles, observable, True, "")
    section = intervals_section.render(campaign, TINY_RECOVERY, quick=True)
    assert section.startswith("## 5. Per-patient intervals") and "Null family-wise" not in section
    _, intervals_table, by_answer_5, *_ = tables(section)
    assert intervals_table == intervals and by_answer_5 == by_answer
    assert "covers the observable conditional benefit at 0.90-0.97 in " in section and " of 4 cells" in section
    assert sum(int(row[1]) for row in by_answer[1:]) == len(champion)  # every served outcome-run, under its answer
    assert {row[0] for row in by_answer[1:]} == set(champion["answer"])


def _fake_trial(task, shift: float = 0.0) -> list[dict]:
    """A trial's rows as run_replicate shapes them (a test row and the timing row), its result a function of the task."""
    base = {"scenario": task.scenario, "n": task.n, "replicate": task.replicate, "seed": task.seed, "trial_kind": "tests"}
    return [
        {**base, "kind": "test", "outcome": "pain", "method": "imputed", "p": 0.25 + task.replicate / 100 + shift, "stat": 1.5,
         "components": {"a": 0.1 * task.replicate}, "seconds": float(np.random.default_rng().random())},
        {**base, "kind": "timing", "method": "all", "seconds": float(np.random.default_rng().random()), "cpu_seconds": 1.0},
    ]


def test_resume_extends_another_codes_campaign_only_when_its_trials_reproduce(tmp_path, monkeypatch):
    from dataclasses import asdict

    def design(k: int) -> recovery.Settings:
        counts = (("ushape", (k,)), ("sharp", (k,)))
        return replace(TINY_RECOVERY, scenarios=recovery.NULLS, trials=counts, bootstrap_trials=counts, permutation_trials=(),
                       full_trials=(), workers=1)

    earlier, larger = design(2), design(3)
    stored = asdict(replace(earlier, workers=0))
    assert recovery.extends(stored, larger) and recovery.extends(stored, earlier)
    assert not recovery.extends(stored, replace(larger, alpha=0.1))  # another design, not more of the same
    # The second ushape trial would lose its default test: not the trial the earlier code ran.
    assert not recovery.extends(stored, replace(larger, bootstrap_trials=(("ushape", (1,)), ("sharp", (3,)))))
    assert not recovery.extends(asdict(replace(larger, workers=0)), earlier)  # fewer trials: the result would drop some

    trial = _fake_trial(recovery.tasks(earlier, {})[0])
    assert recovery.same_results(_fake_trial(recovery.tasks(earlier, {})[0]), pd.DataFrame(trial))  # times differ only
    assert not recovery.same_results(_fake_trial(recovery.tasks(earlier, {})[0], shift=1e-6), pd.DataFrame(trial))

    partial = tmp_path / "recovery-partial.jsonl"

    def store() -> None:
        rows = [row for task in recovery.tasks(earlier, {}) for row in _fake_trial(task)]
        partial.write_text(pd.DataFrame(rows).to_json(orient="records", lines=True))
        partial.with_suffix(".key").write_text(f"abc1234\n{stored!r}\n")

    ran: list[tuple] = []
    shift = {"value": 0.0}
    monkeypatch.setattr(recovery, "_single_threaded", lambda task: ran.append((task.scenario, task.replicate)) or _fake_trial(task, shift["value"]))
    store()
    frame = recovery.run_benchmark(larger, {}, progress=False, partial=partial, resume=True)
    # First the first trial of each earlier cell, then only the trials the earlier design lacked.
    assert sorted(ran[:2]) == [("sharp", 0), ("ushape", 0)] and sorted(ran[2:]) == [("sharp", 2), ("ushape", 2)]
    per_trial = frame.drop_duplicates(["scenario", "replicate"]).set_index(["scenario", "replicate"])
    assert per_trial["resumed"].eq(True).groupby(level="replicate").all().tolist() == [False, True, False]
    assert per_trial["verified"].eq(True).groupby(level="replicate").all().tolist() == [True, False, False]
    assert set(frame.loc[frame["resumed"].eq(True), "code"]) == {"abc1234"}
    assert "2 of them kept from the run of code abc1234" in recovery._resumed(frame) and "each of its 2 cells" in recovery._resumed(frame)
    # The campaign file now carries this code's key: an interruption resumes it as the same code and design.
    ran.clear()
    again = recovery.run_benchmark(larger, {}, progress=False, partial=partial, resume=True)
    assert not ran and len(again) == len(frame) and again["resumed"].all()

    # A re-run that does not reproduce its stored result: nothing stored is kept, every trial runs under this code.
    store()
    ran.clear()
    shift["value"] = 1e-6
    frame = recovery.run_benchmark(larger, {}, progress=False, partial=partial, resume=True)
    assert len(ran) == 6 and len(set(ran)) == 6
    assert not frame["resumed"].eq(True).any() if "resumed" in frame else True
    assert recovery._resumed(frame) == ""


@pytest.mark.slow  # tiny recovery trials: each fits candidates and runs the tests (8-25 s)
def test_a_tests_only_recovery_run_needs_no_oracle_and_says_so(tmp_path):
    settings = replace(
        TINY_RECOVERY, scenarios=recovery.NULLS, trials=(("ushape", (1,)), ("sharp", (1,))), bootstrap_trials=(("ushape", (1,)),),
        permutation_trials=(), full_trials=(), peers=False,
    )
    markdown = recovery.run(quick=False, out_dir=tmp_path, settings=settings)
    assert not (tmp_path / "oracle-cache").exists() or not list((tmp_path / "oracle-cache").iterdir())
    assert "No trial of this run had the work-up" in markdown
    assert "- Served answer:" not in markdown and "- Earlier default:" not in markdown  # the design lists what ran
    fwer, nominal, calibrated, carry = tables(markdown)
    # What the null trials carry: on a null design only the two means, no share (there is no modification to carry).
    assert [row[:4] for row in carry[1:]] == [["`ushape`", "80", outcome, "1"] for outcome in ("pain", "memory")]
    assert all(row[6] == row[9] == "—" for row in carry[1:])
    assert [row[:4] for row in fwer[1:]] == [
        [label, "`ushape`", "80", "1"]
        for label in ("product default", "product default read at 99 null trials", "product option `evidence.combination` = `bonferroni`",
                      "product option `evidence.combination` = `fisher_or_bootstrap` (added after interim figures)",
                      "BCF spread alone (the default until 2026-12-06)", "prespecified modifiers alone, calibrated")
    ]
    assert nominal[0][2:] == ["null: FWER", "ushape: FWER", "sharp: FWER"] and nominal[1][2] == "—" and first_column(nominal)[0].startswith("product default")


def test_test_calibration_ranks_against_null_trials_and_leaves_each_out():
    rows = []
    for replicate, p in enumerate([0.01, 0.2, 0.5, 0.8]):
        for outcome in ("pain", "memory"):
            rows.append({"kind": "test", "scenario": "null", "n": 99, "replicate": replicate, "outcome": outcome, "method": "split_rate", "p": p, "stat": 0.0})
    rows.append({"kind": "test", "scenario": "final", "n": 99, "replicate": 0, "outcome": "pain", "method": "split_rate", "p": 0.001, "stat": 0.0})
    rows.append({"kind": "test", "scenario": "final", "n": 99, "replicate": 0, "outcome": "memory", "method": "split_rate", "p": 0.6, "stat": 0.0})
    table = recovery.rejection_table(pd.DataFrame(rows), recovery.QUICK).set_index(["scenario", "replicate", "outcome", "method"])
    # Below every one of the 8 null values: 1/9; the null trial with p = 0.01 is ranked among the other 6.
    assert table.loc[("final", 0, "pain", "split_rate"), "p_cal"] == pytest.approx(1 / 9)
    assert table.loc[("null", 0, "pain", "split_rate"), "p_cal"] == pytest.approx(1 / 7)
    assert table.loc[("final", 0, "pain", "split_rate"), "p_cal_holm"] == pytest.approx(2 / 9)


def test_the_share_of_an_alternatives_statistics_its_null_trials_carry_is_read_against_the_null_design():
    """(null trials' mean - R) / (observed - R), R the `null` design's mean observed statistic of the same size and outcome."""

    def row(scenario, replicate, observed, null):
        components = json.dumps({"observed": observed, "null": null})
        return {"kind": "test", "scenario": scenario, "n": 300, "replicate": replicate, "outcome": "pain",
                "method": "imputed_randomisation", "p": 0.5, "stat": 0.0, "components": components}

    frame = pd.DataFrame([
        row("null", 0, [0.10, 0.5], [[0.1, 0.0], [0.1, 0.2]]),
        row("null", 1, [0.10, -0.5], [[0.1, 0.0], [0.1, -0.2]]),
        row("strong", 0, [0.50, 4.0], [[0.2, 1.0], [0.2, 1.0]]),  # BCF: (0.2 - 0.1) / (0.5 - 0.1); modifiers: 1 / 4
        {"kind": "test", "scenario": "strong", "n": 300, "replicate": 0, "outcome": "pain", "method": "split_rate", "p": 0.1, "stat": 0.0},
    ])
    lines = recovery.null_carry_markdown(frame, recovery.LEVEL)
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| `")]
    strong = next(line for line in table if line.startswith("| `strong`")).strip("| ").split(" | ")
    assert strong[1:4] == ["300", "pain", "1"]
    assert strong[6] == "25%" and strong[9] == "25%"
    assert strong[4] == "0.500" and strong[8] == "1.000"
    null = next(line for line in table if line.startswith("| `null`")).strip("| ").split(" | ")
    assert null[3] == "2" and null[6] == "—"  # no share on a null design: nothing to carry
    # No stored null trials (a test that was not run): no section rather than an empty table.
    assert recovery.null_carry_markdown(frame.drop(columns="components"), recovery.LEVEL) == []


def test_the_default_tests_two_statistics_alone_are_also_read_as_a_bonferroni_union():
    """Beside Fisher's combination: the smaller of the two statistics' own p-values, doubled (capped at 1)."""
    rows = [
        {"kind": "test", "scenario": "final", "n": 1000, "replicate": 0, "outcome": outcome, "method": method, "p": p, "stat": 0.0}
        for outcome, bcf, modifiers in (("pain", 0.30, 0.01), ("memory", 0.70, 0.90))
        for method, p in (("imputed_randomisation_bcf", bcf), ("imputed_randomisation_modifiers", modifiers))
    ]
    table = recovery.rejection_table(pd.DataFrame(rows), recovery.QUICK).set_index(["outcome", "method"])
    assert table.loc[("pain", "imputed_randomisation_either"), "p"] == pytest.approx(0.02)
    assert table.loc[("memory", "imputed_randomisation_either"), "p"] == pytest.approx(1.0)
    assert table.loc[("pain", "imputed_randomisation_either"), "p_holm"] == pytest.approx(0.04)
    assert "Bonferroni" in recovery._test_label("imputed_randomisation_either")


def test_the_bonferroni_option_is_read_from_its_two_parts_rows_as_the_job_computes_it():
    """``evidence.combination: bonferroni``'s rows: BCF's spread alone and the parametric bootstrap, the smaller p doubled;
    a bootstrap that failed on a trial leaves BCF's spread alone (as ``bonferroni_result`` does)."""
    base = {"kind": "test", "scenario": "ushape", "n": 99, "seed": 1, "trial_kind": "cheap tests+default test"}
    rows = [
        {**base, "replicate": 0, "outcome": "pain", "method": "imputed_randomisation_bcf", "p": 0.30, "permutations_run": 16, "seconds": 4.0},
        {**base, "replicate": 0, "outcome": "pain", "method": "composites_parametric", "p": 0.01, "permutations_run": 199, "seconds": 1.0},
        {**base, "replicate": 0, "outcome": "memory", "method": "imputed_randomisation_bcf", "p": 0.20, "permutations_run": 24, "seconds": 6.0},
        {**base, "replicate": 0, "outcome": "memory", "method": "composites_parametric", "error": "risk score: too few responders"},
        {**base, "replicate": 1, "outcome": "pain", "method": "composites_parametric", "p": 0.01, "permutations_run": 199, "seconds": 1.0},
    ]
    frame = recovery.with_derived_rows(pd.DataFrame(rows))
    derived = frame[frame["method"] == "imputed_randomisation_bcf_parametric"].set_index(["replicate", "outcome"])
    assert list(derived.index) == [(0, "pain"), (0, "memory")]  # no BCF spread on replicate 1: no verdict
    assert derived.loc[(0, "pain"), "p"] == pytest.approx(0.02) and derived.loc[(0, "memory"), "p"] == pytest.approx(0.20)
    assert derived.loc[(0, "pain"), "permutations_run"] == 16 and derived.loc[(0, "pain"), "seconds"] == pytest.approx(5.0)
    assert len(recovery.with_derived_rows(frame)) == len(frame)  # rows already derived are not derived twice
    assert not (frame["method"] == "imputed_randomisation_parametric").any()  # no Fisher row here: not derived
    fisher = {**base, "replicate": 0, "outcome": "pain", "method": "imputed_randomisation", "p": 0.04, "permutations_run": 40, "seconds": 9.0}
    both = recovery.with_derived_rows(pd.DataFrame([*rows, fisher]))
    candidate = both[both["method"] == "imputed_randomisation_parametric"]
    assert len(candidate) == 1 and candidate["p"].iloc[0] == pytest.approx(0.02) and candidate["permutations_run"].iloc[0] == 40
    table = recovery.rejection_table(frame, recovery.QUICK).set_index(["replicate", "outcome", "method"])
    assert table.loc[(0, "pain", "imputed_randomisation_bcf_parametric"), "p_holm"] == pytest.approx(0.04)
    assert recovery.level_tests() == ["imputed_randomisation", "imputed_randomisation_bcf_parametric", "imputed_randomisation_parametric"]
    assert recovery._test_label("imputed_randomisation_bcf_parametric").startswith("product option `evidence.combination` = `bonferroni`: ")
    text = recovery.level_criterion("imputed_randomisation_bcf_parametric", [("ushape", 99, 1, 150, 0.04), ("sharp", 99, 9, 150, 0.11)], 0.05)
    assert text.startswith("The issue's criterion for product option `evidence.combination` = `bonferroni`") and "met in 1 of 2 cells" in text
    assert "n = 99: 10/300 = 3.3%" in text


def test_the_product_default_row_follows_the_jobs_evidence_combination(monkeypatch):
    """Whichever setting the job's config makes its default is the section's product default (first, and so named); the
    Fisher row is then an option. The rows themselves do not change: every setting is read from the same run."""
    assert recovery.default_test() == "imputed_randomisation" and recovery.product_tests()[0] == "imputed_randomisation"
    assert recovery._short_label("imputed_randomisation") == "product default"
    assert recovery._short_label("imputed_randomisation_99") == "product default read at 99 null trials"
    evidence = recovery._job_evidence().model_copy(update={"combination": "fisher_or_bootstrap"})
    monkeypatch.setattr(recovery, "_job_evidence", lambda: evidence)
    assert recovery.product_tests()[0] == recovery.level_tests()[0] == "imputed_randomisation_parametric"
    assert recovery._short_label("imputed_randomisation_parametric") == "product default (added after interim figures)"
    assert recovery._short_label("imputed_randomisation") == "product option `evidence.combination` = `fisher`"
    assert recovery._test_label("imputed_randomisation_99").startswith("product option `evidence.combination` = `fisher` read at 99")
    assert sorted(recovery.product_tests()) == sorted(recovery.PRODUCT_TESTS)
    # The design's description says which test is the job's and that the section still runs Fisher's on every trial.
    import core.config

    original = core.config.load_config

    def job_config(path=None, **overrides):
        config = original(path, **overrides)
        return config.model_copy(update={"evidence": config.evidence.model_copy(update={"combination": "fisher_or_bootstrap"})})

    monkeypatch.setattr(core.config, "load_config", job_config)
    lines = "\n".join(recovery.QUICK.describe())
    assert "run on every trial as `evidence.combination: fisher` runs it" in lines
    assert "- Product default test: the job's `evidence.combination: fisher_or_bootstrap`, read from that run: that Fisher test or" in lines


def test_grf_rate_averages_ties_and_weights_like_grf():
    from benchmarks.peers import rate

    scores = np.array([1.0, 0.0, 3.0, 0.0])
    # A constant priority is no ranking at all: every TOC point is 0.
    assert rate(np.zeros(4), scores, "AUTOC") == pytest.approx(0.0)
    priority = np.array([4.0, 3.0, 2.0, 1.0])
    toc = np.cumsum(scores) / np.arange(1, 5) - scores.mean()
    assert rate(priority, scores, "AUTOC") == pytest.approx(toc.mean())
    assert rate(priority, scores, "QINI") == pytest.approx(np.mean(np.arange(1, 5) / 4 * toc))


TINY_JOB = {
    "cv": {"folds": 2, "repeats": 1, "inner_folds": 2},
    "evidence": {"permutations": 2, "replicates": 2, "rate_bootstrap": 10},  # replicates: the default test's simulated trials
    "intervals": {"bootstrap_models": 5},
    "candidates": {
        "t_learner": {"lightgbm": {"n_estimators": 10}},
        "dr_learner": {"nuisance": {"n_estimators": 10}, "final": {"n_estimators": 10}},
    },
    "executor": {"workers": 1},
}


def _child_payload(argv: list[str], capsys) -> dict:
    """Run a measured child's code in this process (a subprocess would re-import everything) and read its JSON line."""
    training._main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


TIMING = {"phases": [], "by_category": {c: {"wall_s": 1.0, "cpu_s": 1.5} for c in ("data", "cv", "test", "final fits", "mlflow", "reports")}}
MAPS = [
    {"desc": "pain: nested CV", "executor": "dask", "workers": 2, "tasks": 10, "seconds": 4.0, "shared_bytes": 2**20, "item_bytes": 10 * 2**10,
     "result_bytes": 10 * 2**11, "count_seconds": 0.3},
    {"desc": "pain: heterogeneity test", "executor": "dask", "workers": 2, "tasks": 8, "seconds": 0.5, "shared_bytes": 2**10, "item_bytes": 80,
     "result_bytes": 80},
    {"desc": "final fits: champions", "executor": "dask", "workers": 2, "tasks": 2, "seconds": 0.5, "shared_bytes": 2**20, "item_bytes": 100,
     "result_bytes": 2**20},
]
JOB_PAYLOAD = {
    "n": 99,
    "executor": "local",
    "job_seconds": 10.0,
    "job_cpu_seconds": 15.0,
    "process_cpu_seconds": 18.0,
    "driver_cpu_seconds": 12.0,
    "timing": TIMING,
    "maps": MAPS,
    "config_digest": "x",
    "auto": {"cv.folds": 5, "candidates.bcf.max_patients": "all"},
    "settings": {"cv": "3 x 5 folds, inner 3", "bootstrap_models": 100, "bcf_patients": "all"},
    "outcomes": {
        o: {"test": "imputed_randomisation", "permutations": 11, "n_tested": 99, "p_value": 0.5, "p_adjusted": 0.5, "champion": "risk_model",
            "evidence": False, "promoted": True}
        for o in ("pain", "memory")
    },
}


@pytest.mark.slow  # a whole (tiny) training job with MLflow tracking: about 20 s
def test_training_job_child_runs_the_real_job(tmp_path, capsys):
    from training.simulate import simulate

    data = tmp_path / "trial.csv"
    simulate("final", 60, 3).to_csv(data, index=False)
    argv = ["job", "--data", str(data), "--n", "60", "--executor", "default", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    job = _child_payload([*argv, "--overrides", json.dumps(TINY_JOB), "--count-bytes"], capsys)
    assert set(job["outcomes"]) == {"pain", "memory"} and all(o["permutations"] <= 2 for o in job["outcomes"].values())
    assert set(job) == set(JOB_PAYLOAD)
    assert {"cv", "test", "final fits", "mlflow", "reports"} <= set(job["timing"]["by_category"])
    assert job["process_cpu_seconds"] >= job["timing"]["by_category"]["cv"]["cpu_s"] > 0
    # The executor's counters: every loop of the job, each placed in its phase, with what it moved
    assert {training.map_category(m["desc"]) for m in job["maps"]} == {"cv", "test", "final fits", "reports"}  # reports: the figures
    assert all(m["tasks"] >= 1 and m["item_bytes"] > 0 and m["result_bytes"] > 0 for m in job["maps"])
    assert all(m["shared_bytes"] > 0 for m in job["maps"] if training.map_category(m["desc"]) == "cv")
    assert "cv.folds" not in job["auto"] and job["auto"]["candidates.bcf.max_patients"] == "all"  # TINY_JOB sets cv.folds: not auto
    _, _, outcomes = tables(training.render_jobs([("local", ChildResult(job, 20.0, 2**20, 1), "0.5")], training.FULL))
    assert first_column(outcomes) == ["pain", "memory"]


def test_training_tables():
    jobs = [
        ("local", ChildResult(JOB_PAYLOAD, 20.0, 900 * 2**20, 3), "0.5"),
        ("dask", ChildResult(JOB_PAYLOAD, 30.0, 1200 * 2**20, 5), "0.7"),
    ]
    markdown = training.render_jobs(jobs, training.FULL)
    assert "wall **1.50x**" in markdown and "identical across executors: **yes**" in markdown
    assert markdown.index("the 30 s target") < markdown.index("the 60 s one") < markdown.index("| executor")  # ratios first
    jobs_table, phases, outcomes = tables(markdown)
    assert first_column(jobs_table)[0].startswith("local processes") and len(jobs_table) == 3 and len(jobs_table[0]) == 8
    assert phases[0][1:] == ["data", "cv", "test", "final fits", "mlflow", "reports"] and phases[1][2] == "1.0 / 1.5"
    assert first_column(outcomes) == ["pain", "memory"]

    from benchmarks.common import ProcessPeak

    def child(n: int, wall: float) -> ChildResult:
        processes = [ProcessPeak(1, "python -m benchmarks.training job", n * 2**20, 1.0, True),
                     ProcessPeak(2, "python -c from joblib.externals.loky.backend.popen_loky_posix", 3 * n * 2**20, 1.0, False),
                     ProcessPeak(3, "python -c from joblib.externals.loky.backend.resource_tracker import main", 9 * n * 2**20, 0.1, False)]
        return ChildResult({**JOB_PAYLOAD, "n": n}, wall, 5 * n * 2**20, 3, 1.0, processes)

    curve = [(child(n, wall), "1.0") for n, wall in ((99, 30.0), (1_000, 60.0), (100_000, 150.0))]
    markdown = training.render_curve(curve)
    assert "n = 100,000: wall **1.25x** the 2-minute target" in markdown and "within 2 minutes: **NO**" in markdown
    assert markdown.index("2-minute target") < markdown.index("| n |")  # ratios first
    table, auto, tests, phases = tables(markdown)
    assert first_column(table) == ["99", "1,000", "100,000"] and first_column(phases) == ["99", "1,000", "100,000"]
    assert table[3][2] == "1.25x" and table[2][5] == "3,000" and table[2][6] == "1,000"  # the tracker is no worker
    assert auto[0][1:] == ["`cv.folds`", "`bcf.max_patients`"] and auto[1][1:] == ["5", "all"]
    assert len(tests) == 1 + 2 * 3 and tests[3][3] == "99 (subsample)"  # 99 of 1,000 patients tested

    usage = {"scheduler": {"cpu_s": 1.0, "tree_peak": 2**27, "root_peak": 2**27, "worker_peak": 0},
             **{f"worker-{i}": {"cpu_s": 50.0, "tree_peak": 2**31, "root_peak": 2**26, "worker_peak": 2**31} for i in range(2)}}
    small = training.ClusterRun(child(1_000, 100.0), "1.0", usage, 2, "4GiB", 1_000)
    large = training.ClusterRun(ChildResult({**JOB_PAYLOAD, "n": 10_000, "driver_cpu_seconds": 48.0, "timing": {
        "by_category": {c: {"wall_s": 4.0, "cpu_s": 3.0} for c in ("data", "cv", "test", "final fits", "mlflow", "reports")}}},
        450.0, 2**30, 1), "1.0", usage, 2, "4GiB", 10_000)
    markdown = training.render_cluster([small, large])
    assert "wall **0.50x** the 15-minute target" in markdown and "**0.50x** the 4 GB target (2,048 MB" in markdown
    cluster, phases = tables(markdown)
    assert first_column(cluster) == ["1,000", "10,000"] and cluster[2][4] == "50 + 50" and cluster[2][7] == "2,048 / 2,048"
    failed = training.ClusterRun(None, "1.0", usage, 2, "4GiB", 10_000, "after 99 s: KilledWorker")  # reported, not raised
    markdown = training.render_cluster([small, failed])
    assert "n = 10,000: **FAILED** after 99 s: KilledWorker" in markdown and "**0.50x** the 4 GB target" in markdown
    cluster, phases = tables(markdown)
    assert cluster[2][:2] == ["10,000", "FAILED"] and cluster[2][7] == "2,048 / 2,048" and first_column(phases) == ["1,000"]

    markdown = training.render_projection(small, large)
    assert "job wall **4.5x**, driver CPU **4.0x**" in markdown and "0.3 s at n = 10,000 and 0.3 s at n = 1,000 went to counting" in markdown
    amdahl, phases = tables(markdown)
    # At 10^4: cv ran 4 s, all in loops; test and final fits 4 s each, 0.5 s in loops; data, mlflow, reports on the driver
    assert amdahl[1][1:] == ["24", "19"] and amdahl[2][1:] == ["22", "19"]  # 19 + 5 x 2/2, 19 + 5 x 2/4
    cv = next(row for row in phases if row[0] == "cv")
    assert cv[3] == "4.0x" and cv[5] == "0.0" and cv[6] == "1 / 10" and cv[7] == "1.0 MB → 1.0 MB"
    assert cv[8] == "1.0 KB" and cv[9] == "2.0 KB" and cv[10] == "2.0 MB"  # a broadcast scatter counted once per worker
    assert next(row for row in phases if row[0] == "mlflow")[6:] == ["—"] * 5


@pytest.mark.slow  # a scheduler and two worker processes from the dask CLI (a few seconds) and one loop on them
def test_the_separate_process_cluster_runs_a_loop_and_is_stopped(tmp_path):
    import operator

    import psutil

    from training.executor import MAP_LOG, make_executor

    MAP_LOG.measure_bytes = True
    try:
        with training.DaskProcesses(tmp_path / "cluster", 2, "1GiB", tmp_path, "t") as cluster:
            pids = [process.pid for _, process, _ in cluster._processes]
            with make_executor("dask", scheduler=cluster.address) as executor:
                assert executor.workers == 2
                # operator.add: a task function the workers can import (they do not have the tests on their path)
                assert executor.map(operator.add, [(1,), (2,), (3,)], desc="final fits: champions", shared=(10,)) == [(1, 10), (2, 10), (3, 10)]
        record = MAP_LOG.records[-1]
    finally:
        MAP_LOG.measure_bytes = False
    assert record.tasks == 3 and record.workers == 2 and record.shared_bytes > 0 and record.item_bytes > 0 and record.result_bytes > 0
    usage = cluster.usage()
    assert set(usage) == {"scheduler", "worker-0", "worker-1"}
    assert all(u["worker_peak"] > 0 and u["cpu_s"] > 0 for k, u in usage.items() if k != "scheduler")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)  # stopped


@pytest.mark.slow  # a child benchmark process that simulates a 300-patient trial (a few seconds)
def test_a_measured_child_process_reports_time_and_memory(tmp_path):
    out = tmp_path / "trial.csv"
    result = run_child(["benchmarks.training", "simulate", "--out", str(out), "--n", "300", "--seed", "2"], 600, tmp_path / "child.log")
    assert result.payload["n"] == 300 and result.payload["bytes"] == out.stat().st_size > 0
    assert result.wall_seconds > 0 and result.peak_rss_bytes > 0 and result.peak_processes >= 1
    assert result.processes[0].root and result.root_peak_bytes == result.processes[0].peak_rss_bytes > 0


def test_the_command_line_names_each_knob_once(monkeypatch):
    monkeypatch.setenv("BENCH_RECOVERY", "level")
    monkeypatch.setenv("BENCH_DEADLINE", "19:00")
    monkeypatch.delenv("BENCH_REPLICATES_SCALE", raising=False)
    monkeypatch.delenv("BENCH_RESUME", raising=False)
    monkeypatch.setenv("BENCH_COMMAND", "make bench BENCH_ARGS='--sections recovery'")
    assert run.command_line(["--sections", "recovery"]).startswith("`BENCH_RECOVERY=level BENCH_DEADLINE=19:00 make bench")
    monkeypatch.setenv("BENCH_COMMAND", "BENCH_RECOVERY=level make bench BENCH_ARGS='--sections recovery'")
    line = run.command_line(["--sections", "recovery"])
    assert line.count("BENCH_RECOVERY=") == 1 and line.startswith("`BENCH_DEADLINE=19:00 BENCH_RECOVERY=level make bench")


def test_runner_reports_missing_sections_and_writes_the_header(tmp_path):
    parts, seconds, failed = run.run_sections(["no_such_section"], quick=True, out_dir=tmp_path)
    assert "does not exist yet" in parts[0] and not seconds and not failed
    from datetime import UTC, datetime

    text = run.render(parts, seconds, ["--quick"], True, datetime.now(UTC), 1.0, (0.1, 0.2))
    for needle in ("# Benchmark results", "Date:", "Command:", "Machine:", "Python 3", "scikit-learn", "lightgbm"):
        assert needle in text


def test_a_partial_run_keeps_the_other_sections_figures(tmp_path):
    earlier = tmp_path / "RESULTS.md"
    earlier.write_text(
        "# Benchmark results\n\n- Date: 2026-01-02 03:04 UTC; total 1 min\n- Command: `make bench` (runs `python -m benchmarks.run`)\n\n"
        "## 1. Subgroup recovery\n\nfigures A\n\n## 2. Serving\n\nNot run: `benchmarks/serving.py` does not exist yet.\n\n"
        "## 3. Training\n\nfigures C\n"
    )
    kept = run.previous_sections(earlier)
    assert set(kept) == {"recovery", "training"}  # a stub is not worth keeping
    assert kept["training"].startswith("## 3. Training\n\n> Kept from the run of 2026-01-02 03:04 UTC (`make bench`)")
    assert kept["training"].rstrip().endswith("figures C")
    earlier.write_text("# Benchmark results\n\n- Date: 2026-02-02 00:00 UTC\n\n" + kept["training"])
    assert run.previous_sections(earlier)["training"] == kept["training"]  # the original date stays


def test_serving_load_test_table():
    from benchmarks import serving

    result = serving.LoadResult("BentoML /predict (ours)", "1 patient", 8, 200, 0, 20.0, [0.01 * (i % 7 + 1) for i in range(200)])
    load = serving.LoadTest(result, rss_before=400 * 2**20, rss_peak=420 * 2**20, rss_after=410 * 2**20, processes=2)
    markdown = serving.render_load_test(load, serving.QUICK)
    (table,) = tables(markdown)
    assert table[0][:3] == ["requests", "concurrency", "errors"]
    assert table[1][:3] == ["200", "8", "0"] and table[1][-1] == "+10"
    assert "Stopped by" not in markdown
    short = serving.LoadTest(serving.LoadResult("x", "1 patient", 8, 50, 1, 120.0, [0.1] * 50), 1, 1, 1, 2)
    assert "after 50 of 200 requests" in serving.render_load_test(short, serving.QUICK)


def test_serving_throughput_says_what_is_compared_and_gives_both_ratios():
    """Issue 23: one of our requests answers both outcomes, one MLflow request one; both ratios, from the measured rows."""
    from benchmarks import serving

    def row(target, payload, rps):
        return serving.LoadResult(target, payload, 8, int(rps * 10), 0, 10.0, [0.02] * 10)

    results = [
        row("BentoML /predict (ours)", "1 patient", 200.0),
        row(serving.PEER_BOTH, "1 patient", 25.0),  # pain then memory: two HTTP requests per row request
        row(serving.PEER_ONE, "1 patient", 40.0),
        row("BentoML /predict (ours)", "100 patients", 20.0),
        row(serving.PEER_BOTH, "100 patients", 5.0),
        row(serving.PEER_ONE, "100 patients", 10.0),
    ]
    c = serving.throughput_comparison(results[0], results[2], results[1], outcomes=2)
    assert c["per_request"] == pytest.approx(5.0)  # 200 / 40 requests/s
    assert c["ours_answers"] == pytest.approx(400.0) and c["mlflow_answers"] == pytest.approx(50.0)
    assert c["per_answer"] == pytest.approx(8.0)
    batch = serving.throughput_comparison(results[3], results[5], results[4], outcomes=2)
    assert batch["ours_answers"] == pytest.approx(4000.0) and batch["per_answer"] == pytest.approx(4.0)
    markdown = serving._markdown(results, None, {}, {}, serving.QUICK, True, extra={"champions": {"pain": "bcf (v1)", "memory": "bcf (v1)"}})
    assert "one request to our `/predict` answers every outcome" in markdown and "answers one outcome" in markdown
    assert "5.0x per request, 8.0x per outcome answer" in markdown
    assert "200 requests/s (2 outcomes each) vs the pain server's 40.0 (1 outcome each)" in markdown
    run = {"patients": 100_000, "scored": 100_000, "progress_lines": 5, "load": 1.0, "mib": 10.0}
    steps = {"load_s": 1.0, "read": 0.5, "score": 1.0, "write": 0.5, "start_up": 3.0, "rate_scoring": 50_000.0}
    tables = [{**run, "seconds": 5.0, "rate": 20_000.0, "cpu": 9.5, "source": "csv", "format": "parquet", **steps},
              {**run, "seconds": 6.0, "rate": 16_667.0, "cpu": 9.0, "source": "parquet", "format": "jsonl"}]  # fmt: skip
    batch_files = {"batch_cli": {**run, "seconds": 50.0, "rate": 2_000.0, "cpu": 40.0}, "batch_tables": tables}
    markdown = serving._markdown(results, None, {}, {}, serving.QUICK, True, extra={"champions": {"pain": "bcf (v1)"}, **batch_files})
    assert (
        "| `responders predict`, 100,000 patients (CSV to Parquet, child process) | >= 50,000 patients/s | 20,000 patients/s | "
        "5.0 s wall, 9.5 s CPU, start-up included; 50,000 patients/s without the 3.0 s of start-up and model loading "
        "(read 0.50 s, score 1.00 s, write 0.50 s) |"
    ) in markdown
    assert "| `responders predict`, 100,000 patients (Parquet to JSON lines, child process) | >= 50,000 patients/s | 16,667 patients/s | 6.0 s wall, 9.0 s CPU, start-up included |" in markdown
    # The same calls and command with BCF champions, beside the arm-only ones (ratios BCF / arm-only).
    one = serving.LoadResult("BentoML /predict (ours)", "1 patient", 1, 100, 0, 1.0, [0.002] * 50 + [0.003] * 50)
    bcf_tables = [{**tables[0], "rate": 10_000.0, "rate_scoring": 20_000.0, "seconds": 10.0, "cpu": 19.0, "score": 3.0}]
    bcf = {"trial": ["strong", 400, 8], "champions": {"pain": "bcf (v1)", "memory": "bcf (v1)"}, "batch_tables": bcf_tables,
           "calls": {"/predict": {"requests": 100, "errors": 0, "p50": 3.0, "p99": 4.5}}}  # fmt: skip
    text = serving.render_bcf(bcf, one, None, tables)
    assert "`simulate('strong', 400, 8)`" in text and "pain: bcf (v1), memory: bcf (v1)" in text
    assert "| `/predict`, 1 patient, concurrency 1 (httpx) | 3.0 / 4.5 ms | 2.5 / 3.0 ms | 1.50 | 100 (0 errors) |" in text
    bcf["calls"]["/predict"]["plain"] = {"requests": 2000, "errors": 0, "p50": 1.5, "p99": 2.4}
    text = serving.render_bcf(bcf, one, None, tables, {"/predict": {"requests": 2000, "errors": 0, "p50": 1.0, "p99": 1.6}})
    assert "| `/predict`, 1 patient, concurrency 1 (minimal client) | 1.5 / 2.4 ms | 1.0 / 1.6 ms | 1.50 | 2,000 (0 errors) |" in text
    assert "| `responders predict`, 100,000 patients, CSV to Parquet | 10,000 / 20,000 patients/s | 20,000 / 50,000 patients/s | 0.50 |" in text


def test_serving_reports_the_first_calls_after_ready_with_their_memory_steps():
    """Issue 26: the first /explain and the first 500-patient /predict after ready, time and RSS step, in the targets."""
    from benchmarks import serving

    results = [serving.LoadResult("BentoML /predict (ours)", "1 patient", 1, 10, 0, 1.0, [0.002] * 10)]
    first = {
        "explain": {"first": 0.0123, "first_rss_mib": 0.25, "second": 0.0081, "second_rss_mib": 0.0},
        "predict": {"first": 0.142, "first_rss_mib": 11.5, "second": 0.09, "second_rss_mib": 0.5, "patients": 500},
    }
    markdown = serving._markdown(results, None, {"predict, 1 patient": 1.0}, {}, serving.QUICK, True, extra={"first": first})
    assert "| first `/explain` after `/readyz` said ready (1 patient) | <= 50 ms | 12.3 ms | RSS step +0.2 MiB; the second call 8.1 ms, +0.0 MiB |" in markdown
    assert "| first 500-patient `/predict` after ready (after that `/explain`) | <= 0.5 s, no lasting memory step | 0.142 s |" in markdown
    assert "RSS step +11.5 MiB; the second call 0.090 s, +0.5 MiB" in markdown


def test_the_jobs_verdict_is_read_exactly_from_a_longer_run_of_the_default_test():
    """The recovery benchmark reads a smaller budget's verdict (the earlier 99 null trials) exactly from one run of the default test."""
    from helpers import fast_config
    from scipy.stats import norm

    from training.executor import LocalExecutor
    from training.heterogeneity import imputed_randomisation_test

    rng = np.random.default_rng(11)
    n = 80
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=[f"x{i}" for i in range(4)])
    t = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n - n // 2)]).astype(int)
    executor = LocalExecutor(workers=1)
    for modifier in (0.0, 2.5):  # a clear non-rejection (stops early) and a strong modifier (runs the whole budget)
        y = (rng.uniform(size=n) < norm.cdf(0.5 * X["x0"] + t * (0.2 + modifier * (X["x1"] > 0)))).astype(int)
        job = imputed_randomisation_test(X, t, y, fast_config(evidence={"replicates": 9, "sequential_h": 3}), 0.5, executor)
        longer = imputed_randomisation_test(X, t, y, fast_config(evidence={"replicates": 19, "sequential_h": 3}), 0.5, executor)
        read = recovery.job_budget_result(longer, 9, 3)
        assert (read.p_value, read.permutations_run, read.stopped_early) == (job.p_value, job.permutations_run, job.stopped_early)
        assert np.array_equal(read.null, job.null)
        # The combined test (BCF's spread and a named modifier, Fisher's combination, stopped for futility): read exactly too.
        config = {"replicates": 9, "sequential_h": 3, "alpha": 0.3}  # a level that lets 9 null trials stop
        job = imputed_randomisation_test(X, t, y, fast_config(evidence=config), 0.5, executor, modifiers=["x1"])
        longer = imputed_randomisation_test(X, t, y, fast_config(evidence={**config, "replicates": 19}), 0.5, executor, modifiers=["x1"])
        read = recovery.job_budget_result(longer, 9, 3, 0.3)
        assert job.kind == read.kind == "bcf_spread_modifiers"
        assert (read.p_value, read.permutations_run, read.stopped_early) == (job.p_value, job.permutations_run, job.stopped_early)
        assert np.allclose(read.null, job.null) and read.statistic == pytest.approx(job.statistic)
        assert np.array_equal(read.null_components, job.null_components)
        assert read.details["components"] == job.details["components"]  # each statistic's own p-value at the job's stop


def test_heldout_section_counts_holm_rejections_per_trial_and_reads_auc_per_outcome_run():
    from benchmarks.heldout import Plan, render

    rows = []
    for replicate, (pain, memory) in enumerate([(0.001, 0.9), (0.04, 0.04), (0.03, 0.5), (0.5, 0.6)]):
        for outcome, p in (("pain", pain), ("memory", memory)):
            rows.append({"design": "ushape", "n": 3000, "replicate": replicate, "outcome": outcome, "p": p, "seconds": 1.0, "auc_top_quarter": np.nan, "p_normal": p / 2, "z": 1.0})
    for replicate, (pain, memory, auc_pain, auc_memory) in enumerate([(0.001, 0.2, 0.95, 0.92), (0.3, 0.001, 0.7, 0.91)]):
        for outcome, p, auc in (("pain", pain, auc_pain), ("memory", memory, auc_memory)):
            rows.append({"design": "final", "n": 3000, "replicate": replicate, "outcome": outcome, "p": p, "seconds": 1.0, "auc_top_quarter": auc, "p_normal": p, "z": 3.0})
    text = render(pd.DataFrame(rows), Plan(sizes=(3000,), null_trials=(4,), alternative_trials=(2,)), 1.0)
    # Holm: (0.001, 0.9) rejects; (0.04, 0.04) does not (0.04 x 2 = 0.08), nor (0.03, 0.5) (0.06).
    assert "| 3,000 | — | 1/4 = 25%" in text and "not met: `ushape` n = 3,000 (1/4)" in text
    assert "Per size" not in text  # one null design: nothing to pool
    sharp = [{**row, "design": "sharp"} for row in rows if row["design"] == "ushape"]
    text = render(pd.DataFrame(rows + sharp), Plan(sizes=(3000,), null_trials=(4,), alternative_trials=(2,)), 1.0)
    assert "Per size, the null designs pooled: n = 3,000: 2/8 = 25.0% (upper 59.1%, not met)." in text
    assert "| — | 3/4 = 75%" in text  # read from the normal: p / 2, so (0.02, 0.02) and (0.015, 0.25) reject too
    final = next(line for line in text.splitlines() if "`final`" in line)
    cells = [c.strip() for c in final.strip("|").split("|")]
    assert cells[2] == "2" and cells[3].startswith("1/2") and cells[4].startswith("1/2")
    assert cells[6].startswith("2/3")  # AUC >= 0.9 in three outcome-runs; trial 0's memory run (p 0.2) was not rejected


def test_large_trials_section_counts_runs_within_the_oracle_gap_and_floors_served_despite_evidence():
    from benchmarks.large import Plan, render

    base = {
        "scenario": "final", "n": 10_000, "test": "held_out", "p_adjusted": 0.01, "eligible": "arm_only,bcf,t_learner",
        "auc_bcf": 0.75, "coverage": 0.9, "width": 0.2, "interval_score": 0.5, "interval_score_average": 1.0,
        "coverage_average": 0.3, "job_seconds": 60.0, "bcf_seconds": 10.0, "former_choice": "bcf",
    }
    rows = [
        # within 0.05 of the oracle, and the rule below 2,000 (BCF) was not
        {**base, "replicate": 0, "outcome": "pain", "answer": "conditional", "champion": "t_learner", "cv_choice": "t_learner",
         "evidence": True, "auc_oracle": 0.90, "auc_served": 0.86, "auc_former": 0.75, "floor_despite_evidence": False},
        # 0.051 below the oracle: not within
        {**base, "replicate": 0, "outcome": "memory", "answer": "conditional", "champion": "t_learner", "cv_choice": "t_learner",
         "evidence": True, "auc_oracle": 0.90, "auc_served": 0.849, "auc_former": 0.86, "floor_despite_evidence": False},
        # the floor served with evidence and an eligible candidate: counted, and a constant ranks at 0.5
        {**base, "replicate": 1, "outcome": "pain", "answer": "average", "champion": "arm_only", "cv_choice": "t_learner",
         "evidence": True, "auc_oracle": 0.90, "auc_served": 0.5, "auc_former": 0.5, "floor_despite_evidence": True,
         "interval_score": 2.0},
    ]
    text = render(pd.DataFrame(rows), Plan(sizes=(10_000,), trials=(2,), scenarios=("final",)), 1.0, False, True, 2)
    assert text.startswith("## 6. The served answer on large trials")
    assert "within 0.05 of the observable oracle: **1 of 3** outcome-runs (the rule below 2,000 patients: 1 of 3); by trial size: 10,000: 1 of 3." in text
    assert "a candidate beat the floor: **1**" in text
    assert "No outcome-run's served model ranked the fresh patients' true benefit with AUC >= 0.9." in text
    ranked = [{**rows[0], "auc_served": 0.91}, {**rows[1], "auc_served": 0.93, "evidence": False, "p_adjusted": 0.2}, rows[2]]
    assert (
        "true benefit with AUC >= 0.9: 2 of 3; the job's test found effect modification (Holm) in **1 of 2** (not: `final` "
        "10,000 memory (AUC 0.930, Holm p 0.200))."
        in render(pd.DataFrame(ranked), Plan(sizes=(10_000,), trials=(2,), scenarios=("final",)), 1.0, False, True, 2)
    )
    assert "interval score below the trial average's in 2 of 3" in text
    pain = next(line for line in text.splitlines() if line.startswith("| `final` | 10,000 | pain"))
    cells = [c.strip() for c in pain.strip("|").split("|")]
    assert cells[3] == "2" and cells[4] == "average 1, conditional 1" and cells[7] == "0.680 (0.500)"
    assert cells[10] == "0.90 / —" and "EconML is not installed" in text  # no peer columns: said, not left blank


def test_large_trials_section_scores_the_served_interval_beside_econml_on_the_same_trials():
    from benchmarks.large import Plan, render

    base = {
        "scenario": "strong", "n": 10_000, "test": "held_out", "p_adjusted": 0.01, "eligible": "arm_only,t_learner",
        "auc_bcf": 0.85, "width": 0.2, "interval_score_average": 5.0, "coverage_average": 0.1, "job_seconds": 40.0,
        "bcf_seconds": 10.0, "former_choice": "bcf", "answer": "conditional", "champion": "t_learner", "cv_choice": "t_learner",
        "evidence": True, "auc_oracle": 0.96, "auc_served": 0.93, "auc_former": 0.88, "floor_despite_evidence": False,
        "cf_width": 0.3, "cf_seconds": 20.0,
    }
    rows = [
        {**base, "replicate": 0, "outcome": "pain", "coverage": 0.7, "interval_score": 0.6, "cf_coverage": 0.6, "cf_interval_score": 1.2, "cf_auc": 0.95},
        {**base, "replicate": 1, "outcome": "pain", "coverage": 0.8, "interval_score": 1.4, "cf_coverage": 0.8, "cf_interval_score": 1.0, "cf_auc": 0.90},
    ]
    text = render(pd.DataFrame(rows), Plan(sizes=(10_000,), trials=(2,), scenarios=("strong",), forest_trees=200), 1.0, False, True, 2)
    assert "the served interval's score is below the forest's in **1 of 2** outcome-runs" in text
    assert "The forest's ranking is within 0.05 of the observable oracle in 1 of 2" in text and "coverage 0.70, width 0.300" in text
    row = next(line for line in text.splitlines() if line.startswith("| `strong` | 10,000 | pain"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[10:13] == ["0.75 / 0.70", "0.200 / 0.300", "1.000 / 5.000 / 1.100"]
    trial = next(line for line in text.splitlines() if line.startswith("| `strong` | 10,000 | 2 | pain"))
    assert "| 0.850 | 0.900 | 0.930 |" in trial  # BCF, EconML, served AUC


def test_large_trials_section_sets_the_served_interval_beside_the_models_own_without_the_allowance():
    from benchmarks.large import Plan, render

    base = {
        "scenario": "strong", "n": 10_000, "test": "held_out", "p_adjusted": 0.01, "eligible": "arm_only,t_learner",
        "auc_bcf": 0.85, "width": 0.25, "interval_score_average": 5.0, "coverage_average": 0.1, "job_seconds": 40.0,
        "bcf_seconds": 10.0, "former_choice": "bcf", "champion": "t_learner", "cv_choice": "t_learner", "evidence": True,
        "auc_oracle": 0.96, "auc_served": 0.93, "auc_former": 0.88, "floor_despite_evidence": False, "cf_width": 0.3,
        "cf_seconds": 20.0, "cf_coverage": 0.9, "cf_auc": 0.95, "width_own": 0.15,
    }
    rows = [
        {**base, "replicate": 0, "outcome": "pain", "answer": "conditional", "coverage": 0.9, "interval_score": 0.5,
         "cf_interval_score": 0.6, "allowance": 0.04, "coverage_own": 0.7, "interval_score_own": 0.8},
        {**base, "replicate": 1, "outcome": "pain", "answer": "conditional", "coverage": 0.8, "interval_score": 0.7,
         "cf_interval_score": 0.6, "allowance": 0.02, "coverage_own": 0.6, "interval_score_own": 0.5},
        {**base, "replicate": 0, "outcome": "memory", "answer": "risk_based", "coverage": 0.5, "interval_score": 1.5,
         "cf_interval_score": 0.6, "allowance": 0.0, "coverage_own": 0.5, "interval_score_own": 1.5},
    ]
    text = render(pd.DataFrame(rows), Plan(sizes=(10_000,), trials=(2,), scenarios=("strong",)), 1.0, False, True, 2)
    assert (
        "above 0 in 2 of 3 outcome-runs (0 where the groups' gaps are within their noise, and below 2,000 patients, where it "
        "is not measured), SD 2.0-4.0 pp. Without it the model's own interval (refits or draws) covers 0.60 "
        "at width 0.150; its interval score is below the served one's in 1 of 3 and below EconML's in 1 of 3." in text
    )
    pain = next(line for line in text.splitlines() if line.startswith("| `strong` | 10,000 | pain"))
    assert [c.strip() for c in pain.strip("|").split("|")][13] == "3.0 (0.65)"
    old = pd.DataFrame(rows).drop(columns=["allowance", "coverage_own", "width_own", "interval_score_own"])
    assert "Model-error allowance" not in render(old, Plan(sizes=(10_000,), trials=(2,), scenarios=("strong",)), 1.0, False, True, 2)
    # With its two parts recorded: each part's range, and the interval with the calibration part alone.
    parts = [
        {"allowance_calibration": 0.03, "allowance_disagreement": np.sqrt(0.04**2 - 0.03**2), "coverage_calibration": 0.8,
         "width_calibration": 0.2, "interval_score_calibration": 0.6},
        {"allowance_calibration": 0.02, "allowance_disagreement": 0.0, "coverage_calibration": 0.8, "width_calibration": 0.2,
         "interval_score_calibration": 0.7},
        {"allowance_calibration": 0.0, "allowance_disagreement": 0.0, "coverage_calibration": 0.5, "width_calibration": 0.15,
         "interval_score_calibration": 1.5},
    ]
    text = render(pd.DataFrame([{**r, **p} for r, p in zip(rows, parts, strict=True)]), Plan(sizes=(10_000,), trials=(2,), scenarios=("strong",)), 1.0, False, True, 2)
    assert (
        "calibration error across groups, SD 2.0-3.0 pp, and the served model's root-mean-square out-of-fold disagreement"
        in text
    )
    assert "0.0-2.6 pp. With the calibration part alone the interval covers 0.70 at width 0.183; the served interval's score is below that one's in 1 of 3." in text
    pain = next(line for line in text.splitlines() if line.startswith("| `strong` | 10,000 | pain"))
    assert [c.strip() for c in pain.strip("|").split("|")][13] == "3.0 (2.5, 1.3); 0.65 / 0.80"


def test_large_trials_section_sets_the_m_out_of_n_interval_beside_the_full_size_bootstrap():
    from benchmarks.large import Plan, render

    base = {
        "scenario": "final", "test": "held_out", "p_adjusted": 0.01, "eligible": "arm_only,t_learner", "auc_bcf": 0.75,
        "coverage": 0.6, "width": 0.1, "interval_score": 0.5, "interval_score_average": 1.0, "coverage_average": 0.3,
        "job_seconds": 60.0, "bcf_seconds": 10.0, "former_choice": "bcf", "answer": "conditional", "champion": "t_learner",
        "cv_choice": "t_learner", "evidence": True, "auc_oracle": 0.9, "auc_served": 0.88, "auc_former": 0.75,
        "floor_despite_evidence": False, "outcome": "pain",
    }
    mofn = {"bootstrap_rate": 0.5, "bootstrap_fraction": 0.1, "coverage_full": 0.5, "interval_score_full": 0.6}
    rows = [
        {**base, "n": 10_000, "replicate": 0},  # full-size bootstrap served: no comparison columns
        {**base, **mofn, "n": 100_000, "replicate": 0, "coverage_mofn": 0.6, "width_mofn": 0.11, "width_full": 0.10,
         "interval_score_mofn": 0.5, "refit_seconds_mofn": 5.0, "refit_seconds_full": 40.0},
        {**base, **mofn, "n": 100_000, "replicate": 1, "coverage_mofn": 0.7, "width_mofn": 0.13, "width_full": 0.10,
         "interval_score_mofn": 0.4, "refit_seconds_mofn": 5.0, "refit_seconds_full": 20.0},
    ]
    text = render(pd.DataFrame(rows), Plan(sizes=(10_000, 100_000), trials=(1, 2), scenarios=("final",)), 1.0, False, True, 2)
    assert "Over 2 outcome-runs the m-out-of-n interval is 1.20x the full-size one's width, and its refits take 1/6.0 of the time" in text
    row = next(line for line in text.splitlines() if line.startswith("| `final` | 100,000 | pain | 2 | 0.50"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:] == ["0.65 / 0.50", "0.120 / 0.100", "0.450 / 0.600", "6.0x"]
    assert "m-out-of-n" not in render(pd.DataFrame(rows[:1]), Plan(sizes=(10_000,), trials=(1,), scenarios=("final",)), 1.0, False, True, 2)

def test_the_minimal_client_reads_sized_and_chunked_answers_on_one_socket():
    """The serving benchmark's client without an HTTP library: one keep-alive socket, sized and chunked bodies, errors counted."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from benchmarks import serving

    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 - the http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Authorization"], body, self.client_address[1]))
            status = 500 if body["i"] == 25 else 200
            self.send_response(status)
            if body["i"] % 2:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
            else:
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"{\"ok\":1}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = serving._plain_client(f"http://127.0.0.1:{server.server_port}", "/predict", lambda i: {"i": i}, 10, "x", warm=20)
    finally:
        server.shutdown()
    assert [b["i"] for _, _, b, _ in seen] == list(range(30)) and {p for p, _, _, _ in seen} == {"/predict"}
    assert {a for _, a, _, _ in seen} == {f"Bearer {serving.TOKEN}"} and len({port for *_, port in seen}) == 1  # one socket
    assert result.requests == 10 and len(result.latencies) == 10 and result.errors == 1  # request 25: a 500



def test_the_told_modifier_test_finds_a_modifier_and_not_one_that_is_absent():
    """The yardstick of section 1 (benchmarks/modifier_tests.py) on trials whose truth is known."""
    from scipy.stats import norm

    from benchmarks.modifier_tests import modifier_lr_test

    rng = np.random.default_rng(5)
    n = 600
    risk, m, t = rng.normal(size=n), rng.normal(size=n), rng.integers(0, 2, n)
    modified = (rng.random(n) < norm.cdf(0.5 * risk + 0.3 * t + 0.6 * t * m)).astype(int)
    constant = (rng.random(n) < norm.cdf(0.5 * risk + 0.3 * t)).astype(int)
    found, absent = modifier_lr_test(risk, m, t, modified), modifier_lr_test(risk, m, t, constant)
    assert found["df"] == 1 and found["p"] < 1e-4 and found["stat"] > absent["stat"]
    assert absent["p"] > 0.05
    two = modifier_lr_test(risk, np.column_stack([m, rng.normal(size=n)]), t, modified)
    assert two["df"] == 2 and two["p"] < 1e-3


def test_the_parametric_bootstrap_of_the_modifier_statistic_finds_a_modifier_and_not_one_that_is_absent():
    """Section 1's comparison row: the product's modifier statistic against trials drawn from its fitted null model."""
    from scipy.stats import norm

    from benchmarks.modifier_tests import parametric_bootstrap_test
    from core.config import load_config

    rng = np.random.default_rng(11)
    n = 400
    F = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "m": rng.normal(size=n)})
    t = rng.integers(0, 2, n)
    config = load_config(None, seed=3).resolved(n)
    modified = (rng.random(n) < norm.cdf(0.6 * F["a"] + 0.3 * t + 0.7 * t * F["m"])).astype(int)
    constant = (rng.random(n) < norm.cdf(0.6 * F["a"] + 0.3 * t)).astype(int)
    m = F[["m"]].to_numpy()
    found = parametric_bootstrap_test(F, m, t, modified, config, "increasing", 39, 5, 1)
    absent = parametric_bootstrap_test(F, m, t, constant, config, "increasing", 39, 5, 1)
    assert found["p"] == pytest.approx(1 / 40) and found["permutations_run"] == 39  # no drawn trial reached it
    assert absent["p"] > 0.1 and absent["permutations_run"] < 39  # stopped once 5 drawn trials reached it
    assert parametric_bootstrap_test(F, m, t, constant, config, "increasing", 39, 5, 1) == absent  # seeded
    # The opposite direction: the same modification is no evidence for a falling effect.
    assert parametric_bootstrap_test(F, m, t, modified, config, "decreasing", 39, 5, 1)["p"] > 0.5


def test_a_measuring_run_keeps_its_campaign_file_in_the_repository_and_resumes_from_it(tmp_path, monkeypatch):
    """A campaign longer than one machine's session: the rows are committed, and BENCH_RESUME=1 starts from them."""
    from benchmarks.run import OUT

    assert recovery.stored_campaigns(quick=False, out_dir=OUT / "full") == recovery.CAMPAIGNS
    assert recovery.stored_campaigns(quick=True, out_dir=OUT / "full") is None  # smoke runs and tests leave it alone
    assert recovery.stored_campaigns(quick=False, out_dir=tmp_path) is None
    counts = (("ushape", (2,)),)
    settings = replace(TINY_RECOVERY, scenarios=("ushape",), trials=counts, bootstrap_trials=counts, permutation_trials=(),
                       full_trials=(), workers=1)
    ran: list[int] = []
    monkeypatch.setattr(recovery, "_single_threaded", lambda task: ran.append(task.replicate) or _fake_trial(task))
    monkeypatch.setattr(recovery, "render", lambda *args, **kwargs: "")
    monkeypatch.setattr(run, "git_revision", lambda: "0240362")  # a short hash of digits: still a revision, not a number
    store, first, second = tmp_path / "campaigns", tmp_path / "machine-1", tmp_path / "machine-2"
    monkeypatch.delenv("BENCH_RESUME", raising=False)
    done = recovery.campaign(settings, first, "recovery", store)
    assert ran == [0, 1] and (store / "recovery.jsonl.gz").exists() and (store / "recovery.key").exists()
    stored = recovery.read_campaign(store / "recovery.jsonl.gz")
    assert len(stored) == len(done.frame) and set(stored["replicate"]) == {0, 1}
    assert set(stored["code"]) == {"0240362"}
    before = (store / "recovery.jsonl.gz").read_bytes()
    # Another machine: nothing in its out directory, the repository's copy resumes every finished trial.
    monkeypatch.setenv("BENCH_RESUME", "1")
    ran.clear()
    again = recovery.campaign(settings, second, "recovery", store)
    assert not ran and len(again.frame) == len(done.frame) and again.frame["resumed"].all()
    assert set(again.frame["code"]) == {"0240362"}
    assert (store / "recovery.jsonl.gz").read_bytes() == before  # the same rows: the same bytes, nothing to commit
    # Without BENCH_RESUME the copy is not read: every trial runs.
    monkeypatch.delenv("BENCH_RESUME")
    recovery.campaign(settings, tmp_path / "machine-3", "recovery", store)
    assert ran == [0, 1]
