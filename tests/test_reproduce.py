"""bench/studies/reproduce.py: the pre-registered analysis on hand-made numbers, and the tiny study end to end."""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = os.path.join(ROOT, "bench", "studies")
SCRIPT = os.path.join(STUDIES, "reproduce.py")
ARMS = ("siglip", "hyperclip", "token")
WIDTHS = ("0.1", "0.2")


def _load(name):
  if STUDIES not in sys.path:
    sys.path.insert(0, STUDIES)
  spec = importlib.util.spec_from_file_location(name, os.path.join(STUDIES, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
  spec.loader.exec_module(module)
  return module


analysis = _load("analysis")
report = _load("report")
reproduce = _load("reproduce")

PENDING = "# Title\n\nResults are pending the first run of `make reproduce`.\n\n"


# ---- the analysis on hand-made numbers ---------------------------------------------------------------------
def test_paired_differences_mean_std_and_t_interval():
  p = analysis.paired({0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.40, 1: 0.45, 2: 0.50})
  assert p.seeds == (0, 1, 2) and p.diffs == pytest.approx((0.10, 0.15, 0.20))
  assert p.mean == pytest.approx(0.15) and p.std == pytest.approx(0.05)
  half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, df=2) x std / sqrt(n)
  assert (p.lo, p.hi) == pytest.approx((0.15 - half, 0.15 + half))
  # paired, not pooled: a shared seed offset cancels (unpaired, the same numbers would overlap)
  p = analysis.paired({0: 0.31, 1: 0.61, 2: 0.91}, {0: 0.30, 1: 0.60, 2: 0.90})
  assert p.lo == pytest.approx(0.01) and p.hi == pytest.approx(0.01) and p.std == pytest.approx(0.0, abs=1e-12)


def test_paired_uses_the_common_seeds_and_needs_two_for_an_interval():
  p = analysis.paired({0: 0.5, 1: 0.7, 5: 0.9}, {1: 0.6, 5: 0.6, 7: 0.1})
  assert p.seeds == (1, 5) and p.diffs == pytest.approx((0.1, 0.3))
  one = analysis.paired({0: 0.5}, {0: 0.2})
  assert one.mean == pytest.approx(0.3) and one.lo is None and one.hi is None
  assert analysis.paired({0: 0.5}, {1: 0.5}) is None
  assert analysis.paired({0: None}, {0: 0.5}) is None


def test_task_selection_excludes_ceiling_and_floor():
  kept, excluded = analysis.select_tasks({"a": 0.96, "b": 0.95, "c": 0.50, "d": 0.119, "e": 0.12},
                                         {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.1, "e": 0.1})
  assert kept == ["c", "e"] and set(excluded) == {"a", "b", "d"}
  assert excluded["b"].startswith("ceiling") and excluded["d"].startswith("floor")
  assert analysis.endpoint({"c": 0.5, "e": 0.3, "a": 1.0}, kept) == pytest.approx(0.4)
  assert analysis.endpoint({"c": 0.5}, []) is None


def _p(diffs):
  return analysis.paired({i: d for i, d in enumerate(diffs)}, {i: 0.0 for i in range(len(diffs))})


SHOWN = analysis.SetDependence(_p([0.05, 0.04, 0.06]), _p([0.10, 0.12, 0.08]))


def test_set_dependence_by_means_or_by_intervals():
  wobbly = _p([0.05, -0.01, 0.02])  # mean > 0, interval across 0
  assert analysis.SetDependence(wobbly, _p([0.1, 0.12, 0.08]), "mean").shown
  assert not analysis.SetDependence(wobbly, _p([0.1, 0.12, 0.08]), "interval").shown
  assert analysis.SetDependence(_p([0.05, 0.04, 0.06]), _p([0.1, 0.12, 0.08]), "interval").shown
  assert not analysis.SetDependence(_p([0.05]), _p([0.1]), "interval").shown  # one seed: no interval
  assert not analysis.SetDependence(None, _p([0.1, 0.12, 0.08]), "mean").shown


@pytest.mark.parametrize("vs_siglip, controls, dep, verdict, phrase", [
    ([0.05, 0.06, 0.07], {"token": [0.02, 0.03, 0.01]}, SHOWN, analysis.REPRODUCED, "beats token"),
    ([-0.03, -0.02, -0.025], {"token": [0.0, 0.0, 0.0]}, SHOWN, analysis.NOT_REPRODUCED, "below the minimal"),
    ([0.05, 0.06, 0.07], {"token": [-0.01, 0.0, -0.02]}, SHOWN, analysis.NOT_REPRODUCED, "fails on token"),
    ([0.05, 0.06, 0.07], {"token": [0.02, 0.03, 0.01]},
     analysis.SetDependence(_p([-0.01, -0.02, 0.0]), _p([0.1, 0.12, 0.08])), analysis.NOT_REPRODUCED, "set dependence"),
    ([0.05, 0.06, 0.07], {"token": [0.02, 0.03, 0.01]}, analysis.SetDependence(_p([0.02, 0.03, 0.01]), None),
     analysis.NOT_REPRODUCED, "set dependence"),
    ([0.05, 0.06, 0.07], {"token": [0.02, 0.03, 0.01]},
     analysis.SetDependence(_p([0.05, -0.01, 0.02]), _p([0.1, 0.12, 0.08]), "interval"),
     analysis.NOT_REPRODUCED, "rule: interval"),
    ([-0.05, 0.02, 0.09], {"token": [0.02, 0.03, 0.01]}, SHOWN, analysis.INCONCLUSIVE, "contains 0"),
    ([0.2], {"token": [0.1]}, SHOWN, analysis.INCONCLUSIVE, "fewer than two"),
])
def test_verdict_rule(vs_siglip, controls, dep, verdict, phrase):
  got, reason = analysis.decide(_p(vs_siglip), {a: _p(d) for a, d in controls.items()}, dep)
  assert got == verdict and phrase in reason, reason


def test_verdict_is_inconclusive_without_an_endpoint():
  assert analysis.decide(None, {}, SHOWN)[0] == analysis.INCONCLUSIVE


# ---- the pre-registered protocol ------------------------------------------------------------------------------
def test_docs_results_md_holds_the_scripts_protocols():
  path = os.path.join(ROOT, "docs", "results.md")
  assert report.registered_protocols(path, reproduce.PROTOCOLS) == list(reproduce.PROTOCOLS)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert all(p in text for p in reproduce.PROTOCOLS)
  assert text.index(reproduce.PROTOCOL_HEADING) < text.index(reproduce.PROTOCOL_V2_HEADING)


def test_a_changed_protocol_is_refused(tmp_path):
  path = tmp_path / "results.md"
  path.write_text(PENDING + reproduce.PROTOCOL, encoding="utf-8")  # the second one not registered yet: fine
  assert report.registered_protocols(str(path), reproduce.PROTOCOLS) == list(reproduce.PROTOCOLS)
  path.write_text(PENDING + reproduce.PROTOCOL + "\n" + reproduce.PROTOCOL_V2.replace("0.25", "0.5"), encoding="utf-8")
  with pytest.raises(report.ProtocolError, match="second version.*differs"):
    report.registered_protocols(str(path), reproduce.PROTOCOLS)
  path.write_text(PENDING + reproduce.PROTOCOL.replace("0.95", "0.90"), encoding="utf-8")
  with pytest.raises(report.ProtocolError, match="differs"):
    report.registered_protocols(str(path), reproduce.PROTOCOLS)
  assert report.registered_protocols(str(tmp_path / "none.md"), ["## Protocol (pre-registered, x)\n"]) \
      == ["## Protocol (pre-registered, x)\n"]
  assert reproduce.main(["--tiny", "--out", str(tmp_path)]) == 2  # stops before any run
  assert not (tmp_path / "runs").exists()


def test_full_study_is_the_protocols():
  mode = reproduce.MODES["full"]
  pilots, mains = reproduce.pilot_specs(mode), reproduce.main_specs(mode, "group")
  assert len(pilots) == 4 and len(mains) == 5 * 2 * 3 + 5 * 2 + 3 + 2 * 3  # + seeds 3-4, ablation, task_sets
  configs = [reproduce.make_config(mode, s) for s in pilots + mains]
  assert {c.loss.name for c in configs} == {"sigmoid"}
  assert {c.model.image.width_mult for c in configs} == {0.1, 0.25}
  assert {c.model.variant for c in configs} == set(reproduce.ARMS)
  assert all(c.loss.scope == "batch" for c in configs if c.model.variant == "siglip")
  assert {s.seed for s in mains} == {0, 1, 2, 3, 4} and {s.seed for s in pilots} == {100}
  assert {s.width for s in mains if s.seed > 2} == {0.1} and {s.seed for s in mains if s.width == 0.25} == {0, 1, 2}
  ablation = [s for s in mains if s.stage == "ablation"]
  assert {(s.arm, s.width, s.scope, s.seed) for s in ablation} == {("hyperclip", 0.1, "batch", s) for s in (0, 1, 2)}
  task_sets = [(s, c) for s, c in zip(mains, configs[len(pilots):]) if s.stage == "task_sets"]
  assert {(s.arm, s.width, s.seed) for s, _ in task_sets} == {(a, 0.1, s) for a in ("siglip", "hyperclip")
                                                                for s in (0, 1, 2)}
  assert {c.data.task_sets for _, c in task_sets} == {0.25}
  assert {c.data.task_sets for s, c in zip(mains, configs[len(pilots):]) if s.stage != "task_sets"} == {0.0}
  assert mode.recalibrate_bn == 512 and mode.task_sets == 0.25


# ---- the tiny study end to end --------------------------------------------------------------------------------
def _run_study(out, env) -> None:
  # One CPU device (not the suite's 8 fake ones): the study's small runs compile and run faster.
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=2400)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _final_row(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return next(r for r in reversed(rows) if "params_checksum" in r)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_device_env):
  out = tmp_path_factory.mktemp("study")
  (out / "results.md").write_text(PENDING + reproduce.PROTOCOL, encoding="utf-8")  # registered before the run
  _run_study(out, one_device_env)
  with open(out / "results.json", encoding="utf-8") as f:
    return out, json.load(f)


def test_study_runs_pilot_arms_widths_seeds_and_the_scope_ablation(study):
  out, results = study
  scope = results["pilot"]["scope"]
  other = {"batch": "group", "group": "batch"}[scope]
  expected = {f"pilot_siglip_w{w}_s100" for w in WIDTHS} | {f"pilot_hyperclip_w0.1_s100_{s}" for s in ("batch", "group")}
  expected |= {f"{a}_w{w}_s{s}" for a in ARMS for w in WIDTHS for s in (0, 1)}
  expected |= {f"{a}_w0.1_s2" for a in ARMS}  # the second protocol's extra seeds, at the claim width only
  expected |= {f"hyperclip_w0.1_s{s}_{other}" for s in (0, 1)}
  expected |= {f"{a}_w0.1_s{s}_ts0.5" for a in ("siglip", "hyperclip") for s in reproduce.MODES["tiny"].task_sets_seeds}
  assert set(results["runs"]) == expected
  scores = results["pilot"]["scope_endpoints"]
  assert scores[scope] >= scores[other] and (scores[scope] > scores[other] or scope == "batch")
  for run in results["runs"].values():
    if run["stage"] == "main":
      assert run["scope"] == ("batch" if run["arm"] == "siglip" else scope)
  with open(out / "results.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  meta = json.loads((out / "throughput.json").read_text(encoding="utf-8"))
  assert set(meta["runs"]) == expected and meta["commit"] and "CPU cores" in meta["machine"]


def test_report_leads_with_the_verdict_and_keeps_the_protocol_verbatim(study):
  out, results = study
  md = (out / "results.md").read_text(encoding="utf-8")
  assert (md.index("## Verdict") < md.index(reproduce.PROTOCOL_HEADING) < md.index("## Outcome of the first protocol")
          < md.index(reproduce.PROTOCOL_V2_HEADING) < md.index("## Primary endpoint"))
  assert all(p.rstrip("\n") in md for p in reproduce.PROTOCOLS) and "pending" not in md
  verdict = results["analysis"]["verdict"]
  assert verdict in (analysis.REPRODUCED, analysis.NOT_REPRODUCED, analysis.INCONCLUSIVE)
  assert f"**Verdict: {verdict}.**" in md and "`tiny` mode" in md
  assert report.registered_protocols(str(out / "results.md"), reproduce.PROTOCOLS) == list(reproduce.PROTOCOLS)
  first = results["analysis_first_protocol"]
  assert f"the verdict is *{first['verdict']}*" in md and first["set_dependence_rule"] == "mean"
  assert results["analysis"]["set_dependence_rule"] == "interval"
  assert first["widths"]["0.1"]["seeds"] == [0, 1] and results["analysis"]["widths"]["0.1"]["seeds"] == [0, 1, 2]
  assert "## Task-shaped training sets" in md and "## Recalibrated BatchNorm" in md


def test_endpoints_and_paired_differences_come_from_the_runs_metrics_files(study):
  out, results = study
  finals = {name: _final_row(out / "runs" / name) for name in results["runs"]}
  for name, run in results["runs"].items():
    assert run["params_checksum"] == finals[name]["params_checksum"]
    assert run["top1"] == {t: finals[name][f"zeroshot/{t}/top1"] for t in run["top1"]}
  pilot_siglip = {t: finals["pilot_siglip_w0.1_s100"][f"zeroshot/{t}/top1"] for t in results["runs"]["siglip_w0.1_s0"]["top1"]}
  assert results["analysis"]["widths"]["0.1"]["tasks"] == [t for t, v in pilot_siglip.items() if v < 0.95]
  lines = (out / "results.md").read_text(encoding="utf-8").splitlines()
  t975 = {2: 12.706204736174698, 3: 4.302652729749464}  # Student's t(0.975, n - 1)
  for w in WIDTHS:
    wa = results["analysis"]["widths"][w]
    seeds = (0, 1, 2) if w == "0.1" else (0, 1)  # the extra seed at the claim width
    ep = {a: [sum(finals[f"{a}_w{w}_s{s}"][f"zeroshot/{t}/top1"] for t in wa["tasks"]) / len(wa["tasks"])
              for s in seeds] for a in ARMS}
    diffs = [h - s for h, s in zip(ep["hyperclip"], ep["siglip"])]
    p = wa["paired"]["hyperclip - siglip"]
    n, mean = len(seeds), sum(diffs) / len(seeds)
    assert p["diffs"] == pytest.approx(diffs) and p["mean"] == pytest.approx(mean)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    assert p["hi"] - p["mean"] == pytest.approx(t975[n] * std / math.sqrt(n))
    row = next(line for line in lines if line.startswith(f"| {w} | hyperclip - siglip |"))
    assert f"{100 * p['mean']:+.1f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}]" in row
    row = next(line for line in lines if line.startswith(f"| {w} | token |"))
    assert row.startswith(f"| {w} | token | {ep['token'][0]:.3f} | {ep['token'][1]:.3f} |")


def test_diagnostics_of_every_hypernetwork_run(study):
  _, results = study
  runs = results["runs"]
  for name, run in runs.items():
    assert ("diagnostics" in run) == (run["stage"] in ("main", "task_sets") and run["arm"] != "siglip"), name
  for w in WIDTHS:
    for s in (0, 1):
      token = runs[f"token_w{w}_s{s}"]["diagnostics"]
      assert token["delta_std_ratio"] == 0.0  # learned tokens: the same Δ whatever the texts
      assert token["inbatch"]["own"] == token["inbatch"]["other"] == token["inbatch"]["mean"]
      hyper = runs[f"hyperclip_w{w}_s{s}"]["diagnostics"]
      assert 0.0 < hyper["delta_std_ratio"] <= 1.0
      assert set(hyper["zeroshot"]["wrong_task"]) == set(runs[f"hyperclip_w{w}_s{s}"]["top1"])
      assert hyper["wrong_task_of"] == {"colour": "shape", "shape": "colour_shape", "position": "size_position"}
      assert all(0.0 <= v <= 1.0 for c in hyper["zeroshot"].values() for v in c.values())
  cond = results["analysis"]["widths"]["0.1"]["conditioning"]
  assert set(cond) == {"hyperclip", "token"} and set(cond["hyperclip"]) >= {"classes", "wrong_task", "train_sets_mean"}


def test_rerun_gives_identical_results_json(study, tmp_path, one_device_env):
  # The second study retrains one main run and reads the others back from a copy of the first study's workdirs
  # (a full second study would double this test's time); the diagnostics are recomputed for every run.
  out, _ = study
  shutil.copytree(out / "runs", tmp_path / "runs")
  retrained = "hyperclip_w0.1_s1"
  shutil.rmtree(tmp_path / "runs" / retrained)
  _run_study(tmp_path, one_device_env)
  assert json.loads((tmp_path / "throughput.json").read_text(encoding="utf-8"))["trained"] == 1
  assert _final_row(tmp_path / "runs" / retrained) == _final_row(out / "runs" / retrained)
  assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_task_sets_ablation_trains_on_task_shaped_sets(study):
  out, results = study
  mode = reproduce.MODES["tiny"]
  ts, tasks = results["analysis"]["task_sets"], results["analysis"]["widths"]["0.1"]["tasks"]
  for arm in ("siglip", "hyperclip"):
    for s in mode.task_sets_seeds:
      name = f"{arm}_w0.1_s{s}_ts0.5"
      config = json.loads((out / "runs" / name / "config.json").read_text(encoding="utf-8"))
      assert config["data"]["task_sets"] == 0.5 and results["runs"][name]["stage"] == "task_sets"
      plain = json.loads((out / "runs" / f"{arm}_w0.1_s{s}" / "config.json").read_text(encoding="utf-8"))
      assert plain["data"]["task_sets"] == 0.0
      want = sum(results["runs"][name]["top1"][t] for t in tasks) / len(tasks)
      assert ts["endpoint"][arm][str(s)] == pytest.approx(want)
  p = ts["paired"]["hyperclip (task_sets) - hyperclip"]
  ep = results["analysis"]["widths"]["0.1"]["endpoint"]["hyperclip"]
  assert p["diffs"] == pytest.approx([ts["endpoint"]["hyperclip"][str(s)] - ep[str(s)] for s in mode.task_sets_seeds])
  assert set(ts["conditioning"]) == {"hyperclip"}


def test_recalibrated_rows_are_eval_only_and_per_task(study):
  _, results = study
  runs, bn = results["runs"], results["analysis"]["recalibrated_bn"]
  tasks = results["analysis"]["widths"]["0.1"]["tasks"]
  for name, run in runs.items():
    has = run["stage"] == "main" and run["width"] == 0.1 and run["arm"] in ("siglip", "hyperclip")
    assert ("recalibrated_bn" in run) == has, name
    if has:
      assert set(run["recalibrated_bn"]) == set(run["top1"])
      assert all(0.0 <= v <= 1.0 for v in run["recalibrated_bn"].values())
  assert bn["n"] == 32 and bn["seeds"] == [0, 1, 2]
  for arm in ("siglip", "hyperclip"):
    want = [sum(runs[f"{arm}_w0.1_s{s}"]["recalibrated_bn"][t] - runs[f"{arm}_w0.1_s{s}"]["top1"][t] for t in tasks)
            / len(tasks) for s in (0, 1, 2)]
    assert bn["paired"][f"{arm} (recalibrated) - {arm}"]["diffs"] == pytest.approx(want)
