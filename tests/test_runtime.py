"""The runtime package, and the line it draws between the data layer and torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_data_layer_imports_no_torch() -> None:
    """``dataset`` and every module under it import without torch (or timm, torchvision): torch is runtime's."""
    code = ("import importlib, json, pkgutil, sys\n"
            "import dataset\n"
            "names = [m.name for m in pkgutil.walk_packages(dataset.__path__, 'dataset.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))\n"
            "print(json.dumps({'modules': names, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"dataset.frames", "dataset.synth.generate", "dataset.score.metric"} <= set(found["modules"])
    assert found["heavy"] == [], f"dataset imports {found['heavy'][:5]}"
