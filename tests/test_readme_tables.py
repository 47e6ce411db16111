"""README tables marked as generated are exactly what their benchmark script prints from its JSON."""

import re
import subprocess
import sys

from conftest import ROOT

MARK = re.compile(r"<!-- generated: python (benchmarks/\S+\.py) (--table[^>]*?) -->\n(.*?)\n<!-- end -->", re.S)


def test_every_generated_readme_table_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    found = MARK.findall(readme)
    assert found, "no generated table in the README"
    scripts = {script for script, _, _ in found}
    assert {"benchmarks/solver_scaling.py", "benchmarks/onebillion_rehearsal.py", "benchmarks/gpu_check.py"} <= scripts
    for script, args, table in found:
        out = subprocess.run([sys.executable, str(ROOT / script), *args.split()], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert table.strip() == out.stdout.strip(), (
            f"README table of {script} {args} differs from its JSON; regenerate it with "
            f"`python {script} {args}`")
