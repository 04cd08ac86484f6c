"""`mer-pipe runs` and `mer-pipe runs compare`: run dirs written in the documented format (metrics.json through
report.summarize, predictions.csv with its header), read back, ranked, formatted, compared and plotted."""
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from mer_pipe.pipeline.experiments.compare import compare_runs, noise_verdict, weighted_f1_batch
from mer_pipe.pipeline.train.metrics import classification_metrics
from mer_pipe.pipeline.train.report import summarize
from mer_pipe.pipeline.experiments.runs import COLUMNS, RunRow, display_cells, load_runs, sort_rows

from conftest import run_cli

CLASSES = ("neutral", "joy", "anger", "sadness")
N_TEST, N_DEV = 300, 120
MER_PIPE = Path(sys.executable).parent / "mer-pipe"


def _labels(rng, n):
    return rng.integers(0, len(CLASSES), n)


def _predict(rng, gold, quality):
    """Predictions that are right with probability `quality`, else a random other class."""
    wrong = (gold + rng.integers(1, len(CLASSES), gold.size)) % len(CLASSES)
    return np.where(rng.random(gold.size) < quality, gold, wrong)


def make_run(path: Path, *, dev_q: float, test_q: float, model="mlp", dataset="d", seeds=(0, 1, 2), select_on="dev",
             lr=1e-3, test_ids=None, data_seed=0) -> Path:
    """A run dir as `mer-pipe train` writes it: config.yaml, metrics.json (report.summarize), predictions.csv."""
    rng = np.random.default_rng(data_seed)
    gold_dev, gold_test = _labels(np.random.default_rng(100), N_DEV), _labels(np.random.default_rng(101), N_TEST)
    ids = test_ids or [f"{dataset}/test/u{i}" for i in range(N_TEST)]
    records, rows = [], []
    for s in seeds:
        dev_p, test_p = _predict(rng, gold_dev, dev_q), _predict(rng, gold_test, test_q)
        result = SimpleNamespace(dev=classification_metrics(gold_dev, dev_p, CLASSES),
                                 test=classification_metrics(gold_test, test_p, CLASSES),
                                 best_epoch=2, history=[{}] * 5, seconds=4.0, seconds_per_epoch=0.8)
        records.append(SimpleNamespace(seed=s, fold="split", result=result, test_ids=ids))
        rows += [[s, "split", select_on, i, CLASSES[g], CLASSES[p], *np.eye(len(CLASSES))[p]]
                 for i, g, p in zip(ids, gold_test, test_p)]
    path.mkdir(parents=True)
    feats = {"t": {"slot": "t", "extractor": "text-hf", "key": "dd518d24912611bf", "dim": 384},
             "a": {"slot": "a", "extractor": "opensmile", "key": "9433b1a05bb529c3", "dim": 88}}
    cfg = {"model": model, "dataset": dataset, "modalities": ["t", "a"], "seeds": list(seeds), "protocol": "standard",
           "select_on": select_on, "model_config": {"hidden": [512]}, "trainer": {"lr": lr}, "features": feats}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    metrics = {"model": model, "dataset": dataset, "protocol": "standard", "select_on": select_on,
               **summarize(records, CLASSES, [])}
    (path / "metrics.json").write_text(json.dumps(metrics))
    with open(path / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "fold", "selected_on", "id", "gold", "predicted", *[f"p_{c}" for c in CLASSES]])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A folder of runs (as a sweep would leave it): one better on dev but worse on test, one the reverse,
    one selected on test, a bigru, a broken, a partial and an old-format run."""
    base = tmp_path_factory.mktemp("runs")
    make_run(base / "sweep" / "dev-best", dev_q=0.9, test_q=0.55, lr=3e-3, data_seed=1)
    make_run(base / "sweep" / "test-best", dev_q=0.6, test_q=0.8, lr=1e-3, data_seed=2)
    (base / "sweep" / "sweep.json").write_text("{}")
    make_run(base / "on-test", dev_q=0.95, test_q=0.95, select_on="test", data_seed=3)
    make_run(base / "gru", dev_q=0.7, test_q=0.7, model="bigru", dataset="other", data_seed=4)
    (base / "broken").mkdir()
    (base / "broken" / "metrics.json").write_text("{not json")
    (base / "partial").mkdir()
    shutil.copy(base / "gru" / "config.yaml", base / "partial" / "config.yaml")
    (base / "old").mkdir()  # an older metrics.json: no model/dataset/select_on, no accuracy, no runs, no config.yaml
    (base / "old" / "metrics.json").write_text(json.dumps(
        {"seeds": [0], "aggregate": {"dev": {"weighted_f1": {"mean": 0.5, "std": 0.0}},
                                     "test": {"weighted_f1": {"mean": 0.4, "std": 0.0}}}}))
    return base


def run_entry_point(*argv):
    return subprocess.run([str(MER_PIPE), *map(str, argv)], check=False, capture_output=True, text=True, timeout=120)


def test_default_rank_is_dev_never_test(runs_dir):
    rows = sort_rows(load_runs([runs_dir / "sweep"]))
    assert [r.run for r in rows] == ["dev-best", "test-best"]
    assert rows[0].dev_wf1 > rows[1].dev_wf1 and rows[0].test_wf1 < rows[1].test_wf1
    assert [r.run for r in sort_rows(rows, "test_wf1")] == ["test-best", "dev-best"]  # only when asked


def test_record_fields(runs_dir):
    (r,) = load_runs([runs_dir / "sweep" / "dev-best"])
    assert (r.model, r.dataset, r.modalities, r.protocol, r.selection) == ("mlp", "d", "t,a", "standard", "dev")
    assert r.features == "t:dd518d a:9433b1" and r.seeds == "0,1,2" and r.n_seeds == 3
    assert (r.epochs, r.best_epoch, r.wall_s) == (5.0, 3.0, 12.0)
    cells = display_cells(r)
    assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells["dev W-F1 %"]) and cells["epochs"] == "5 (best 3)"


def test_test_selected_run_stands_out_and_never_ranks_on_test(runs_dir, capsys):
    code, out, _ = run_cli(["runs", runs_dir], capsys)
    assert code == 0
    lines = out.splitlines()
    on_test = next(x for x in lines if x.startswith("on-test"))
    assert "TEST!" in on_test and "selected on the test set" in out
    # its selection-set score is the test score: not a dev score, so it ranks after every run with one
    ranked = [x.split()[0] for x in lines[1:] if x and not x[0].isdigit() and "TEST!" not in x][:3]
    assert ranked == ["sweep/dev-best", "gru", "sweep/test-best"]
    assert lines.index(on_test) > max(lines.index(x) for x in lines if x.split()[:1] and x.split()[0] in ranked)


def test_broken_partial_and_old_runs_listed_with_a_note(runs_dir, capsys):
    code, out, err = run_cli(["runs", runs_dir, "--format", "json"], capsys)
    assert code == 0, err
    by = {r["run"]: r for r in json.loads(out)}
    assert "unreadable" in by["broken"]["note"] and by["broken"]["test_wf1"] is None
    assert "no metrics.json" in by["partial"]["note"] and by["partial"]["model"] == "bigru"
    assert by["old"]["test_wf1"] == 0.4 and by["old"]["model"] is None and by["old"]["test_acc"] is None
    code, out, _ = run_cli(["runs", runs_dir / "old"], capsys)
    old = out.splitlines()[1].split()
    assert old[1] == "-" and "40.00" in old  # missing fields show '-', one seed shows no ±


def test_every_format_parses_back(runs_dir, capsys):
    outs = {}
    for fmt in ("table", "csv", "md", "json"):
        code, outs[fmt], err = run_cli(["runs", runs_dir, "--format", fmt, "--model", "mlp"], capsys)
        assert code == 0, err
    as_json = json.loads(outs["json"])
    as_csv = list(csv.DictReader(io.StringIO(outs["csv"])))
    assert [r["run"] for r in as_json] == [r["run"] for r in as_csv] == ["sweep/dev-best", "sweep/test-best", "on-test"]
    assert list(as_csv[0]) == list(COLUMNS) == list(as_json[0])
    for j, c in zip(as_json, as_csv):
        assert float(c["test_wf1"]) == pytest.approx(j["test_wf1"]) and c["seeds"] == j["seeds"]
        assert (c["dev_wf1"] == "") == (j["dev_wf1"] is None)
    md = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in outs["md"].splitlines()]
    head = list(display_cells(RunRow("", "")))
    assert md[0] == head and set(md[1]) == {"---"} and all(len(r) == len(head) for r in md)
    assert [r[0] for r in md[2:]] == [r["run"] for r in as_json] and md[4][head.index("select")] == "TEST!"
    table = [re.split(r"\s{2,}", line.strip()) for line in outs["table"].split("\n\n")[0].splitlines()]
    assert table[0] == head and [r[0] for r in table[1:]] == [r["run"] for r in as_json]
    assert all(len(r) == len(head) for r in table)


def test_filters(runs_dir, capsys):
    _, out, _ = run_cli(["runs", runs_dir, "--dataset", "other", "--format", "json"], capsys)
    assert [r["run"] for r in json.loads(out)] == ["gru", "partial"]  # the partial run's config.yaml says 'other'
    _, out, _ = run_cli(["runs", runs_dir, "--model", "mlp,bigru", "--format", "json"], capsys)
    assert {r["model"] for r in json.loads(out)} == {"mlp", "bigru"}


def test_plot_writes_figure_and_its_data(runs_dir, tmp_path, capsys):
    png = tmp_path / "fig" / "wf1.png"
    code, _, err = run_cli(["runs", runs_dir / "sweep", "--plot", png], capsys)
    assert code == 0, err
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(io.StringIO(png.with_suffix(".csv").read_text())))
    assert [r["run"] for r in rows] == ["dev-best", "test-best"]  # sorted by dev
    assert rows[0]["label"] == "mlp lr=0.003" and rows[1]["label"] == "mlp lr=0.001"  # only what differs
    assert float(rows[0]["dev_wf1_std_pct"]) > 0


def test_weighted_f1_batch_equals_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    pred[:80] = gold[:80]
    idx = rng.integers(0, 200, (7, 200))
    want = [f1_score(gold[i], pred[i], labels=range(5), average="weighted", zero_division=0) for i in idx]
    np.testing.assert_allclose(weighted_f1_batch(gold, pred, idx, 5), want, rtol=0, atol=1e-12)


def test_compare_identical_predictions_is_within_noise(runs_dir, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(runs_dir / "sweep" / "dev-best", twin)
    code, out, err = run_cli(["runs", "compare", runs_dir / "sweep" / "dev-best", twin], capsys)
    assert code == 0, err
    assert "within noise" in out.splitlines()[-1] and "tie" in out.splitlines()[-1]
    assert "per-class test F1" in out and all(c in out for c in CLASSES)


def test_compare_clearly_better_run_is_larger_than_seed_noise(runs_dir, capsys):
    a, b = runs_dir / "sweep" / "test-best", runs_dir / "sweep" / "dev-best"
    code, out, err = run_cli(["runs", "compare", a, b], capsys)
    assert code == 0, err
    verdict = out.splitlines()[-1]
    assert re.match(r"A beats B by \d+\.\d\d W-F1 \(95% CI \d+\.\d\d to \d+\.\d\d over test utterances; 3/3 seeds\): "
                    r"larger than seed noise$", verdict), verdict
    c = compare_runs(b, a, resamples=1000)
    assert c.diff < 0 and c.ci[1] < 0 and c.share_a_better == 0 and c.verdict == "larger than seed noise"
    assert compare_runs(b, a, resamples=1000).ci == c.ci  # fixed bootstrap seed: reproducible


@pytest.mark.parametrize("diff, ci, agree, n, std, within, why", [
    (0.02, (0.01, 0.03), 3, 3, 0.005, False, "larger than seed noise"),
    (0.02, (-0.01, 0.05), 3, 3, 0.005, True, "includes 0"),  # utterance noise
    (0.02, (0.01, 0.03), 2, 3, 0.005, True, "2/3 seeds"),  # seeds disagree on the sign
    (0.02, (0.01, 0.03), 3, 3, 0.03, True, "seed-to-seed std of 3.00"),  # seeds move more than the gap
    (-0.02, (-0.03, -0.01), 1, 1, 0.0, False, "seed noise unknown"),
])
def test_noise_verdict(diff, ci, agree, n, std, within, why):
    got = noise_verdict(diff, ci, agree, n, std)
    assert why in got and got.startswith("within noise") == within


def test_cli_errors_are_one_line_exit_2(runs_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    other_ids = make_run(tmp_path / "other-ids", dev_q=0.6, test_q=0.6, test_ids=[f"d/test/x{i}" for i in range(N_TEST)])
    cases = [
        (("runs", tmp_path / "nope"), "is not a directory"),
        (("runs", empty), "no run directories"),
        (("runs", runs_dir / "sweep", "--sort", "bogus"), "--sort 'bogus'"),
        (("runs", "compare", runs_dir / "sweep" / "dev-best", runs_dir / "gru"), "dataset"),
        (("runs", "compare", runs_dir / "sweep" / "dev-best", other_ids), "different test sets"),
        (("runs", "compare", runs_dir / "sweep" / "dev-best", runs_dir / "broken"), "predictions.csv"),
    ]
    for argv, needle in cases:
        res = run_entry_point(*argv)
        assert res.returncode == 2, (argv, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("mer-pipe: error:") and needle in res.stderr, argv
        assert "Traceback" not in res.stderr


def test_run_records_name_the_first_differing_field_and_cell():
    from mer_pipe.pipeline.train.runcheck import metrics_difference, metrics_digest, predictions_difference

    rec = {"complete": True, "aggregate": {"test": {"weighted_f1": {"mean": 0.61, "std": float("nan")}}}, "seeds": [0, 1]}
    met = json.loads(json.dumps({**rec, "files": {"x": "0" * 64}}))  # as read back from metrics.json (NaN included)
    assert metrics_difference(met, rec) is None
    met["aggregate"]["test"]["weighted_f1"]["mean"] = 0.9
    assert metrics_difference(met, rec) == "metrics.json: aggregate.test.weighted_f1.mean is 0.9, the checkpoint recorded 0.61"
    assert "seeds (length)" in metrics_difference({**rec, "seeds": [0]}, rec)
    assert "complete is False" in metrics_difference({**rec, "complete": False}, rec)
    assert metrics_digest({**rec, "digest": "x"}) == metrics_digest(rec) != metrics_digest({**rec, "seeds": [1, 0]})
    csv_text = "seed,fold,selected_on,id,gold,predicted\n0,split,dev,u1,joy,joy\n0,split,dev,u2,joy,anger\n"
    assert predictions_difference(csv_text, csv_text) is None
    edited = csv_text.replace("u2,joy,anger", "u2,joy,joy")
    assert predictions_difference(edited, csv_text) == ("predictions.csv: row 2 (seed 0, id u2) column predicted is "
                                                        "'joy', the checkpoint recorded 'anger'")
    assert "1 rows, the checkpoint recorded 2" in predictions_difference(csv_text.rsplit("0,split", 1)[0], csv_text)


def test_runs_marks_modified_files_but_not_runs_without_records(runs_dir, tmp_path):
    from mer_pipe.pipeline.train.runcheck import metrics_digest, sha256_file

    d = tmp_path / "rec"
    shutil.copytree(runs_dir / "gru", d)
    met = json.loads((d / "metrics.json").read_text())
    met["files"] = {"predictions.csv": sha256_file(d / "predictions.csv")}
    met["digest"] = metrics_digest(met)
    (d / "metrics.json").write_text(json.dumps(met))
    assert load_runs([d])[0].note == "" and load_runs([runs_dir / "gru"])[0].problems == []
    with open(d / "predictions.csv", "a") as fh:
        fh.write("0,split,dev,extra,joy,joy\n")
    row = load_runs([d])[0]
    assert row.problems == ["predictions.csv changed since written (sha256 differs)"]
    assert row.note.startswith("MODIFIED: predictions.csv")
    met["aggregate"]["test"]["weighted_f1"]["mean"] = 0.99
    (d / "metrics.json").write_text(json.dumps(met))
    assert "metrics.json edited since written" in load_runs([d])[0].note
