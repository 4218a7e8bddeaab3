"""Plugin registry: lazy listing, loading, typo hints, base-class checks, and real third-party plugins.

Third-party plugins are installed for real: the example package of
``examples/third_party_defense`` (the one README.md shows) is copied into ``tmp_path`` next to a
generated ``*.dist-info`` folder, and ``robench`` runs in a subprocess with that folder on
``PYTHONPATH``, so discovery goes through ``importlib.metadata`` exactly as after ``pip install``.
"""

from __future__ import annotations

import configparser
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import robench
from robench import registry
from robench.defense import Defense
from robench.registry import PluginError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_defense"
OWN = f"robench {robench.__version__}"


# --- helpers: a plugin distribution on disk ---------------------------------------------------


def example_metadata() -> tuple[str, str, dict[str, list[str]]]:
    """Name, version and entry points (group -> lines) declared in the example's setup.cfg."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(EXAMPLE / "setup.cfg")
    groups = {group: [line.strip() for line in lines.splitlines() if line.strip()]
              for group, lines in cfg["options.entry_points"].items()}
    return cfg["metadata"]["name"], cfg["metadata"]["version"], groups


def write_dist_info(root: Path, name: str, version: str, entry_points: dict[str, list[str]]) -> Path:
    """Write ``<name>-<version>.dist-info`` with METADATA and entry_points.txt, as pip would."""
    folder = root / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    text = "".join(f"[{group}]\n" + "".join(f"{line}\n" for line in lines) + "\n" for group, lines in entry_points.items())
    (folder / "entry_points.txt").write_text(text)
    return folder


def install_example(root: Path) -> None:
    """'Install' the example plugin into ``root``: its package sources plus a dist-info folder."""
    name, version, entry_points = example_metadata()
    shutil.copytree(EXAMPLE / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write_dist_info(root, name, version, entry_points)


def env_for(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != registry.AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def robench_cli(root: Path, *args: str, timeout: int = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], cwd=root, env=env_for(root, **extra),
                          capture_output=True, text=True, timeout=timeout)


def python(root: Path, code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=root, env=env_for(root, **extra),
                          capture_output=True, text=True, timeout=120)


def ls_rows(output: str) -> dict[str, str]:
    """``robench ls`` table rows keyed by plugin name (the first column), wrapped lines joined."""
    rows: dict[str, str] = {}
    name = None
    for line in output.splitlines()[2:]:
        if line.strip() and not line[0].isspace():
            name = line.split()[0]
            rows[name] = line
        elif line.strip() and name is not None:
            rows[name] += " " + line.strip()
    return rows


# --- built-ins, in process --------------------------------------------------------------------


def test_names_lists_builtins():
    defenses = registry.names("defenses")
    assert {"none", "jpeg", "bit-depth"} <= set(defenses)
    assert defenses == sorted(defenses)
    assert {"fgsm", "pgd"} <= set(registry.names("attacks"))
    assert {"tiny", "synthetic", "smoke"} <= set(registry.names("models") + registry.names("datasets")
                                                 + registry.names("benchmarks"))


def test_names_does_not_import_plugins(tmp_path):
    result = python(tmp_path, """
        import json, sys
        from robench import registry
        names = registry.names("defenses") + registry.names("attacks")
        print(json.dumps({"names": names, "loaded": sorted(m for m in sys.modules
              if m.startswith(("robench.defenses.", "robench.attacks.")))}))
        registry.load("defenses", "jpeg")
        print("jpeg" if "robench.defenses.jpeg" in sys.modules else "not imported")
    """)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    listed = json.loads(first)
    assert "jpeg" in listed["names"] and "pgd" in listed["names"]
    assert listed["loaded"] == []
    assert second == "jpeg"  # ... and load really imports it (the check above is not vacuous)


def test_info_records_provider():
    record = registry.info("defenses", "jpeg")
    assert record.value == "robench.defenses.jpeg:JPEG"
    assert record.distribution == "robench" and record.provider == OWN


def test_load_returns_the_class():
    from robench.attack import Attack

    cls = registry.load("defenses", "jpeg")
    assert isinstance(cls, type) and issubclass(cls, Defense) and cls.__name__ == "JPEG"
    assert registry.load("defenses", "jpeg") is cls
    assert issubclass(registry.load("attacks", "pgd"), Attack)
    assert registry.load("benchmarks", "smoke").is_file()


@pytest.mark.parametrize("kind, typo, suggestion", [("defenses", "jpg", "jpeg"), ("defenses", "bitdepth", "bit-depth"),
                                                    ("attacks", "pgdd", "pgd")])
def test_unknown_name_suggests_close_match(kind, typo, suggestion):
    with pytest.raises(PluginError) as info:
        registry.load(kind, typo)
    message = str(info.value)
    assert repr(typo) in message and f"did you mean {suggestion!r}" in message
    assert f"robench ls {kind}" in message


def test_unknown_name_without_close_match():
    with pytest.raises(PluginError, match="unknown defense 'zzzzzz'") as info:
        registry.info("defenses", "zzzzzz")
    assert "did you mean" not in str(info.value)


def test_unknown_kind():
    with pytest.raises(PluginError, match="unknown plugin kind 'defence'"):
        registry.names("defence")


def test_build_from_spec():
    jpeg = registry.build("defenses", "jpeg:quality=50")
    assert isinstance(jpeg, Defense) and type(jpeg).__name__ == "JPEG"
    assert jpeg.quality == 50
    assert registry.build("defenses", "jpeg").quality == 75
    assert registry.build("defenses", robench.Spec.of("bit-depth", bits=3)).bits == 3


@pytest.mark.parametrize("spec", ["jpeg:qualty=50", "jpeg:quality=50,extra=1", "bit-depth:bits=3,quality=5"])
def test_build_with_bad_kwarg_names_the_spec(spec):
    with pytest.raises(PluginError) as info:
        registry.build("defenses", spec)
    assert str(robench.parse_spec(spec)) in str(info.value)
    assert "cannot build defense" in str(info.value)


def test_a_typo_in_an_option_names_the_valid_options_and_the_closest_one():
    with pytest.raises(PluginError) as info:
        registry.build("defenses", "jpeg:qualty=75")
    assert "did you mean 'quality'?" in str(info.value) and "its options: quality, surrogate" in str(info.value)
    with pytest.raises(PluginError, match="did you mean 'steps'"):
        registry.build("attacks", "restored-pgd:stpes=3")  # **kwargs passed on to PGD count as its own
    with pytest.raises(PluginError, match="its options: root, download"):
        registry.build("datasets", "cifar10:rot=x")  # a factory's **kwargs go to the class it returns
    with pytest.raises(PluginError, match="its options: none"):
        registry.build("defenses", "none:x=1")


def test_build_with_unknown_name():
    with pytest.raises(PluginError, match="did you mean 'jpeg'"):
        registry.build("defenses", "jpg:quality=50")


# --- third-party plugins through real entry points (subprocesses) -----------------------------


def test_example_package_is_a_real_plugin_package():
    name, version, entry_points = example_metadata()
    assert (name, version) == ("mydefpkg", "0.1")
    assert entry_points == {"robench.defenses": ["mydef = mydefpkg.mydef:MyDefense"]}
    assert (EXAMPLE / "pyproject.toml").is_file() and (EXAMPLE / "mydefpkg" / "__init__.py").is_file()
    assert "setuptools" in (EXAMPLE / "pyproject.toml").read_text()


def test_example_defense_transform(tmp_path, monkeypatch):
    import torch

    shutil.copytree(EXAMPLE / "mydefpkg", tmp_path / "mydefpkg", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mydefpkg", raising=False)
    monkeypatch.delitem(sys.modules, "mydefpkg.mydef", raising=False)
    from mydefpkg.mydef import MyDefense

    defense = MyDefense()
    x = torch.tensor([0.0, 0.05, 0.1, 0.5, 0.9, 0.95, 1.0]).view(1, 1, 1, 7)
    assert torch.allclose(defense(x), torch.tensor([0.1, 0.1, 0.1, 0.5, 0.9, 0.9, 0.9]).view(1, 1, 1, 7))
    with pytest.raises(TypeError):
        MyDefense(0.2, 0.8)  # hyperparameters are keyword-only
    assert torch.equal(MyDefense(low=0.2, high=0.8)(x).unique(), torch.tensor([0.2, 0.5, 0.8]))


def test_ls_lists_third_party_plugin_with_provider(tmp_path):
    install_example(tmp_path)
    result = robench_cli(tmp_path, "ls", "defenses")
    assert result.returncode == 0, result.stderr
    rows = ls_rows(result.stdout)
    assert "mydef" in rows, result.stdout
    assert "mydefpkg 0.1" in rows["mydef"]
    assert "differentiable=True" in rows["mydef"] and "ERROR" not in rows["mydef"]
    assert OWN in rows["jpeg"]
    described = robench_cli(tmp_path, "ls", "defenses", "mydef")
    assert described.returncode == 0, described.stderr
    assert "mydef: defense mydefpkg.mydef:MyDefense, provided by mydefpkg 0.1" in described.stdout


def test_disable_autoload_keeps_only_builtins(tmp_path):
    install_example(tmp_path)
    write_dist_info(tmp_path, "otherpkg", "2.3", {"robench.defenses": ["jpeg = otherpkg.codec:BetterJPEG"]})
    result = robench_cli(tmp_path, "ls", "defenses", **{registry.AUTOLOAD_ENV: "1"})
    assert result.returncode == 0, result.stderr
    rows = ls_rows(result.stdout)
    assert "mydef" not in rows
    assert {"none", "jpeg", "bit-depth"} <= set(rows)
    assert all(OWN in row and "ERROR" not in row for row in rows.values())  # the jpeg collision is ignored too


def test_name_collision_names_both_providers(tmp_path):
    install_example(tmp_path)
    write_dist_info(tmp_path, "otherpkg", "2.3", {"robench.defenses": ["jpeg = otherpkg.codec:BetterJPEG"]})
    code = """
        import json
        from robench import registry
        out = {"names": registry.names("defenses")}
        try:
            registry.info("defenses", "jpeg")
        except registry.PluginError as err:
            out["error"] = str(err)
        out["mydef"] = registry.info("defenses", "mydef").provider
        print(json.dumps(out))
    """
    result = python(tmp_path, code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "jpeg" in out["names"]
    error = out.get("error", "")
    assert OWN in error and "otherpkg 2.3" in error, out
    assert "robench.defenses.jpeg:JPEG" in error and "otherpkg.codec:BetterJPEG" in error
    assert out["mydef"] == "mydefpkg 0.1"  # other plugins are unaffected


def test_broken_plugins_show_as_errors_in_ls(tmp_path):
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_lib.py").write_text("raise ImportError('brokenpkg needs libfoo')\n")
    (package / "notdef.py").write_text("class NotADefense:\n    pass\n\ndef helper():\n    return 1\n")
    write_dist_info(tmp_path, "brokenpkg", "0.2", {"robench.defenses": [
        "broken = brokenpkg.needs_lib:Thing",
        "notdef = brokenpkg.notdef:NotADefense",
        "notclass = brokenpkg.notdef:helper",
        "missing = brokenpkg.notdef:Nowhere",
    ]})
    result = robench_cli(tmp_path, "ls", "defenses")
    assert result.returncode == 0, result.stderr
    rows = ls_rows(result.stdout)
    assert "ERROR" in rows["broken"] and "libfoo" in rows["broken"] and "brokenpkg 0.2" in rows["broken"]
    for name in ("notdef", "notclass"):
        assert "ERROR" in rows[name] and "not a subclass of robench.defense.Defense" in rows[name]
    assert "ERROR" in rows["missing"] and "Nowhere" in rows["missing"]
    assert "ERROR" not in rows["jpeg"] and OWN in rows["jpeg"]


def test_load_refuses_non_defense_and_reports_import_errors(tmp_path):
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_lib.py").write_text("raise ImportError('brokenpkg needs libfoo')\n")
    (package / "notdef.py").write_text("import torch\n\nclass NotADefense(torch.nn.Module):\n    pass\n")
    write_dist_info(tmp_path, "brokenpkg", "0.2", {
        "robench.defenses": ["broken = brokenpkg.needs_lib:Thing", "notdef = brokenpkg.notdef:NotADefense"],
        "robench.attacks": ["notattack = robench.defenses.jpeg:JPEG"],
    })
    result = python(tmp_path, """
        import json
        from robench import registry
        out = {}
        for kind, name in [("defenses", "notdef"), ("defenses", "broken"), ("attacks", "notattack")]:
            try:
                registry.load(kind, name)
                out[name] = "loaded"
            except registry.PluginError as err:
                out[name] = str(err)
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "'notdef'" in out["notdef"] and "not a subclass of robench.defense.Defense" in out["notdef"]
    assert "'broken'" in out["broken"] and "brokenpkg 0.2" in out["broken"] and "libfoo" in out["broken"]
    assert "not a subclass of robench.attack.Attack" in out["notattack"]


def test_run_with_third_party_defense(tmp_path):
    install_example(tmp_path)
    store, results = tmp_path / "s.sqlite", tmp_path / "res"
    result = robench_cli(tmp_path, "run", "--dataset", "synthetic", "--model", "tiny", "--defense", "mydef",
                         "--attack", "fgsm", "--eps", "6/255", "-n", "32", "--setting", "adaptive",
                         "--store", str(store), "--results", str(results), "--no-progress", "--device", "cpu",
                         timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.is_file()
    boards = list(results.glob("*/leaderboard.csv"))
    assert len(boards) == 1, boards
    with boards[0].open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["defense"] == "mydef"]
    assert len(rows) == 1, boards[0].read_text()
    row = rows[0]
    assert row["attack"] == "fgsm" and row["model"] == "tiny" and row["threat"] == "Linf 6/255"
    assert row["status"] == "done" and int(row["n"]) == 32
    assert 0 <= float(row["robust_acc"]) <= float(row["clean_acc"]) <= 1
