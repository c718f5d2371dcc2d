"""A wheel install works without the source checkout: `pip install .` (docs/DEPLOYMENT.md) ships what the code reads.

The wheel is built from a copy of the package (so the build writes nothing into the checkout), installed with
`--no-deps --target` (the dependencies are this venv's, so nothing is downloaded), and loaded by a fresh interpreter
from a directory outside the checkout with only the install on its path: the definitions, the LoRA presets, the
ComfyUI templates and the ledger's migrations must all come from the installed package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
import influencer_pipeline
from pathlib import Path
installed = Path(influencer_pipeline.__file__).resolve().parent
assert installed.is_relative_to(Path(sys.argv[1]).resolve()), installed
from influencer_pipeline.definitions import defs
from influencer_pipeline.generation.workflows import available_templates, load_template
from influencer_pipeline.training.presets import list_presets, load_preset
import dagster as dg
dg.Definitions.validate_loadable(defs)
repo = defs.get_repository_def()
migrations = installed / "publishing" / "migrations"
print(json.dumps({
    "assets": sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
    "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
    "presets": {name: load_preset(name).name for name in list_presets()},
    "templates": {name: bool(load_template(name)) for name in available_templates()},
    "migrations": sorted(p.name for p in migrations.glob("versions/*.py")),
}))
"""


@pytest.mark.slow
def test_the_wheel_loads_the_definitions_presets_and_templates(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "influencer_pipeline", source / "influencer_pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [wheel] = dist.glob("influencer_pipeline-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "MEDIA_ROOT": str(tmp_path / "m")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-5000:]
    loaded = json.loads(probe.stdout.strip().splitlines()[-1])
    data = ROOT / "influencer_pipeline" / "data"
    shipped_presets = sorted(p.stem for p in (data / "lora_presets").glob("*.yaml"))
    shipped_templates = sorted(
        p.stem for p in (ROOT / "influencer_pipeline" / "data" / "comfy_workflows").glob("*.json")
    )
    assert sorted(loaded["presets"]) == shipped_presets and shipped_presets
    assert sorted(loaded["templates"]) == shipped_templates and all(loaded["templates"].values())
    assert "published_posts" in loaded["assets"] and "daily_content" in loaded["jobs"]
    migrations = ROOT / "influencer_pipeline" / "publishing" / "migrations" / "versions"
    assert loaded["migrations"] == sorted(p.name for p in migrations.glob("*.py"))
