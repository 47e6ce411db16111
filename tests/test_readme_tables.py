"""README tables marked as generated are exactly what their benchmark script prints from its JSON."""

import re
import subprocess
import sys

from conftest import ROOT

# (a marked table inside a list item is indented, its markers too)
MARK = re.compile(r"<!-- generated: python (benchmarks/\S+\.py) (--table[^>]*?) -->\n(.*?)\n[ \t]*<!-- end -->", re.S)


# the README's tables of measured figures: each stays marked (and so checked against its JSON)
EXPECTED = {
    ("benchmarks/default_run.py", "--table"),
    ("benchmarks/lightrnn_quality.py", "--table start_purity"),
    ("benchmarks/lightrnn_quality.py", "--table synthetic"),
    ("benchmarks/lightrnn_quality.py", "--table ptb"),
    ("benchmarks/parity.py", "--table ptb"),
    ("benchmarks/parity.py", "--table wikitext2"),
    ("benchmarks/solver_scaling.py", "--table"),
    ("benchmarks/onebillion_rehearsal.py", "--table"),
    ("benchmarks/gpu_check.py", "--table"),
}


def test_every_generated_readme_table_matches_its_json():
    readme = (ROOT / "README.md").read_text()
    found = MARK.findall(readme)
    missing = EXPECTED - {(script, args) for script, args, _ in found}
    assert not missing, f"README tables no longer marked as generated: {sorted(missing)}"
    for script, args, table in found:
        out = subprocess.run([sys.executable, str(ROOT / script), *args.split()], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        # a table inside a list item is indented: compare line by line
        lines = [line.strip() for line in table.strip().splitlines()]
        assert lines == [line.strip() for line in out.stdout.strip().splitlines()], (
            f"README table of {script} {args} differs from its JSON; regenerate it with "
            f"`python {script} {args}`")
