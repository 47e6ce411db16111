"""benchmarks/gpu_check.py's code on the CPU (--device cpu: tiny shapes, every section that needs no GPU),
and its README table, which shows only GPU measurements."""

import json
import sys

from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_cpu_run_records_every_section_and_both_throughput_arms(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_script("benchmarks/gpu_check.py", "--device", "cpu", "--models", "lightrnn", "lstm",
                      "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["device"]["kind"] == "cpu"
    assert {"torch", "triton", "lightning", "hydra-core", "wandb"} <= set(result["versions"])
    sections = result["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    assert sections["cuda_tests"]["status"] == sections["sru_speed"]["status"] == "skipped"
    for name in ("throughput", "realloc_round", "default_run"):
        assert sections[name]["status"] == "ok", sections[name]
        assert sections[name]["seconds"] > 0
    assert all("train.py model=" in c for c in sections["throughput"]["commands"])
    for model in ("lightrnn", "lstm"):
        row = result["throughput"][model]
        assert row["plain_loop"] > 0 and row["train_py"] > 0
        assert row["train_py_over_plain_loop"] > 0
        assert row["plain_loop_detail"]["vocab_size"] == 2002
    assert sections["realloc_round"]["round_seconds"] > 0 and sections["realloc_round"]["gap"] >= 0
    assert (tmp_path / "gpu_check_default_run_cpu.json").exists()  # the scripts it runs write beside it
    assert out.with_suffix(".png").exists()

    # a CPU run's numbers never reach the README's GPU table
    table = run_script("benchmarks/gpu_check.py", "--table", "--out", str(out), cwd=tmp_path)
    assert table.returncode == 0
    assert table.stdout.count(gpu_check.NOT_MEASURED) == 4 * len(gpu_check.MODELS)


def test_table_shows_a_gpu_measurement():
    result = {"device": {"kind": "cuda", "name": "NVIDIA H200", "driver": "580.1"}, "quick": False,
              "versions": {"torch": "2.11", "triton": "3.6", "lightning": "2.6.6"}, "date": "2026-01-02T03:04:05",
              "throughput": {"lightrnn": {"plain_loop": 207536.4, "train_py": 200000.0,
                                          "train_py_over_plain_loop": 200000.0 / 207536.4}},
              "sections": {"realloc_round": {"status": "ok", "V": 793471, "round_seconds": 42.0, "gap": 0.035},
                           "cuda_tests": {"status": "ok", "counts": {"passed": 20}}}}
    table = gpu_check.table(result)
    assert "| `lightrnn` | 207,536 | 200,000 | 0.96 | not measured yet |" in table
    assert "| `lstm` | not measured yet | not measured yet | not measured yet | not measured yet |" in table
    assert "NVIDIA H200 (driver 580.1)" in table and "42.0 s, certified gap 3.5%" in table and "20 passed" in table
