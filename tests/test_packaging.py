"""The package a user installs outside this checkout: a wheel built from the tree holds the package, its shipped
testbed files and the recipes' default YAMLs, installs into a fresh venv, and `apo-online` works there from another
folder (the checkout not on the path). Also the console command's own behaviour, in process."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from apo_online.cli import console_main
from apo_online.recipes import RECIPES, recipe_yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(venv python, the wheel): the tree built into a wheel, installed without dependencies into a venv that sees
    this interpreter's packages (torch & co.) but not the checkout."""
    root = tmp_path_factory.mktemp("packaging")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(root / "wheels")], check=True, cwd=root)
    wheel = next((root / "wheels").glob("apo_online-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=root)
    return python, wheel


def run_elsewhere(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pytest's pythonpath must not leak the tree
    return subprocess.run(command, capture_output=True, text=True, cwd=folder, env=env, timeout=900)


def test_wheel_holds_the_package_data_and_no_script(installed_wheel):
    _, wheel = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"apo_online/recipes/{name}" for name in RECIPES.values()} <= names
    assert any(n.startswith("apo_online/testbeds/judged-task-v2-") for n in names)
    assert "apo_online/testbeds/judge-labels-v1.json" in names
    assert not any(n.startswith(("recipes/", "eval/", "bench/", "tests/")) for n in names)


def test_installed_console_command_runs_from_another_folder(installed_wheel, tmp_path):
    python, _ = installed_wheel
    where = run_elsewhere([str(python), "-c", "import apo_online; print(apo_online.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(python.parents[1]), where.stdout  # the installed copy
    listing = run_elsewhere([str(python.parent / "apo-online"), "--help"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "ppo, dpo, rjs, grpo" in listing.stdout
    fields = run_elsewhere([str(python.parent / "apo-online"), "ppo", "--help"], tmp_path)
    assert fields.returncode == 0, fields.stderr
    assert "--game.total_steps" in fields.stdout and "--ppo.kl_coef" in fields.stdout
    plan = run_elsewhere([str(python), "-m", "apo_online", "ppo", "--dry_run", "--game.output_dir",
                          str(tmp_path / "run"), "--data.dataset_name", "embedded"], tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "policy reward:" in plan.stdout


def test_console_command_refuses_an_unknown_recipe(capsys):
    assert console_main(["ppo2"]) == 2
    assert "no recipe 'ppo2'; choose one of ppo, dpo, rjs, grpo" in capsys.readouterr().err


def test_console_command_plays_the_recipe_yaml(monkeypatch):
    seen = {}
    monkeypatch.setattr("apo_online.cli.main", lambda argv, default_yaml: seen.update(argv=argv, yaml=default_yaml)
                        or 0)
    assert console_main(["grpo", "--game.total_steps", "3"]) == 0
    assert seen == {"argv": ["--game.total_steps", "3"], "yaml": recipe_yaml("grpo")}
    assert recipe_yaml("grpo").read_text().strip()  # the file is there, not only its name
