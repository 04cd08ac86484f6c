"""bench/bench_gpu.py (the device benchmark of issue 21): its CPU quick mode runs the same code path end to end
(slow: checkpoints, synth corpus, three extraction arms per slot, the four models' epochs)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_gpu.py"


def test_gpu_sampler_is_off_on_cpu():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    with bench_gpu.GpuSampler("cpu") as s:
        pass
    assert s.summary() == {"gpu_busy_pct": None, "gpu_busy_pct_max": None, "gpu_samples": 0, "gpu_sampler": None}


@pytest.mark.slow
def test_quick_cpu_mode_runs_the_device_code_path(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--quick", "--work", str(tmp_path / "work"),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["quick"] and "gpu_name" not in r
    assert [s["slot"] for s in r["extraction"]] == ["t", "a_w2v", "v"]
    for s in r["extraction"]:
        assert s["fp32_overlap_bit_identical"], s["slot"]
        for arm in ("fp32_serial", "fp32_overlap", "autocast_overlap"):
            a = s[arm]
            assert a["clips"] == r["corpus"]["clips"] and a["clips_per_s"] > 0 and a["peak_gpu_mb"] is None
        assert s["fp32_overlap"]["bound"] in ("decode-bound", "forward-bound") and s["overlap_ratio"] > 0
    assert [t["model"] for t in r["train"]] == ["ts-gcl", "ar-iigcn", "jv-icl", "deepmsi-mer"]
    assert all(t["seconds_per_epoch"] > 0 for t in r["train"])
    assert r["sweep"] == {"skipped": "0 GPU(s) visible"}
    # the script's own clock; 2 minutes on an idle 2-core machine (a shared one may take longer)
    assert r["total_s"] < 240
