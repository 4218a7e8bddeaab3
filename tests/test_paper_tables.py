"""Missing cells, paper labels and paper-layout reports; the DIR (ICML 2023) benchmark files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from robench import registry
from robench.cell import Cell
from robench.cli import main
from robench.grid import load_benchmark
from robench.missing import Expected, missing_reason
from robench.paper import Entry, PaperReportError, layout, paper_folder, read_paper_tables, write_paper_report
from robench.runner import run_grid
from robench.spec import SpecError, parse_spec
from robench.store import Store
from robench.threat import ThreatModel

DIR2023 = ["dir2023-table1", "dir2023-table2", "dir2023-table3", "dir2023-table4", "dir2023-table5",
           "dir2023-ablations", "dir2023-adaptive"]
RDP2022_TABLES = ["rdp2022-table1", "rdp2022-table2", "rdp2022-table3", "rdp2022-table4"]
PGD = "pgd:steps=3,step_size=2/255"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def grid_file(tmp_path, **changes) -> str:
    """A small benchmark on the tiny model and synthetic data, with one defense robench does not provide."""
    data = {
        "name": "fake-paper", "dataset": "synthetic", "n": 48, "batch_size": 48, "eps": ["6/255"],
        "models": ["tiny"], "defenses": ["none", "bit-depth:bits=3", "not-yet-registered"],
        "attacks": ["fgsm", PGD], "pending": {"defenses": ["not-yet-registered"]},
        "paper": {
            "table": "fake_table", "row": {"Dataset": "Synth"},
            "defenses": {"none": {"row": {"Defense": "None"}}, "bit-depth": {"row": {"Defense": "Bits"}},
                         "not-yet-registered": {"row": {"Defense": "Pending"}}},
            "attacks": {PGD: {"robust": "PGD", "clean": "Natural"}, "fgsm": {"robust": "FGSM"}},
        },
        **changes,
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def paper_dir(tmp_path):
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "fake_table.csv").write_text(
        "Dataset,Defense,Natural,PGD,FGSM,source\n"
        "Synth,None,91.00,41.00,51.00,Fake et al. Table 1\n"
        "Synth,Bits,82.00,32.00,42.00,Fake et al. Table 1\n"
        "Synth,Pending,73.00,23.00,33.00,Fake et al. Table 1\n"
        "Other,None,64.00,14.00,24.00,Fake et al. Table 1\n"
    )
    return folder


def test_an_unregistered_pending_defense_is_a_missing_cell_and_the_run_exits_0(tmp_path):
    results = tmp_path / "r"
    out = invoke("run", grid_file(tmp_path), "--store", tmp_path / "s.sqlite", "--results", results, "--no-progress")
    assert out.exit_code == 0, out.output
    assert "4 cells computed, 0 found in the store, 0 failed, 2 missing" in out.output
    with open(results / "fake-paper" / "leaderboard.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["attack"] != "worst-case"]
    missing = [r for r in rows if r["status"] == "missing"]
    assert len(rows) == 6 and {r["defense"] for r in missing} == {"not-yet-registered"}
    assert all(r["reason"] == "defense 'not-yet-registered' is not registered" for r in missing)
    assert all(r["robust_acc"] == "" and r["clean_acc"] == "" for r in missing), "missing cells have no numbers"
    assert all(r["status"] == "done" for r in rows if r not in missing)
    assert "defense 'not-yet-registered' is not registered" in (results / "fake-paper" / "leaderboard.md").read_text()


def test_a_declared_checkpoint_is_missing_until_it_exists(tmp_path):
    path = str(tmp_path / "resnet18-at.pt")
    how = "produce it with `robench train at --model resnet18 --dataset cifar10 --output x.pt`"
    cell = Cell(dataset="cifar10", model=f"resnet18:weights={path}", defense="none", attack="fgsm",
                threat=ThreatModel("Linf", 8 / 255))
    expected = Expected(checkpoints={path: how})
    assert missing_reason(cell, expected) == f"checkpoint {path} not found: {how}"
    assert missing_reason(cell, Expected()) is None, "an undeclared checkpoint is never missing (the grid fails)"
    torch.save({}, path)
    assert missing_reason(cell, expected) is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"defenses": ["none", "bit-depth:bitz=3", "not-yet-registered"]}, "cannot build defense 'bit-depth:bitz=3'"),
        ({"defenses": ["none", "bit-dept", "not-yet-registered"], "paper": None}, "did you mean 'bit-depth'"),
        ({"models": ["tiny:channels=1"]}, "inputs shaped (1, 32, 32)"),
        ({"attacks": ["fgsm"], "norm": "L2", "paper": None}, "supports Linf, not L2"),
    ],
)
def test_configuration_mistakes_still_fail_the_grid_before_anything_runs(tmp_path, changes, message):
    store = tmp_path / "s.sqlite"
    out = invoke("run", grid_file(tmp_path, **changes), "--store", store, "--results", tmp_path / "r", "--no-progress")
    assert out.exit_code == 2 and message in out.output
    with Store(store) as opened:
        assert opened._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0
        assert opened.benchmarks() == [], "nothing, not even missing cells, is recorded"


def test_paper_labels_must_name_values_of_the_block(tmp_path):
    with pytest.raises(SpecError, match=r"paper.defenses labels 'jpeg', which is not in this block's defenses"):
        load_benchmark(grid_file(tmp_path, paper={"table": "t", "robust": "PGD", "defenses": {"jpeg": {}}}))
    overridden = load_benchmark(grid_file(tmp_path), {"defenses": ["jpeg"]})
    assert overridden.labels == {}, "overriding an axis leaves cells the paper's table does not describe"


def test_paper_layout_puts_robench_and_paper_numbers_in_the_right_rows_and_columns(tmp_path):
    grid = load_benchmark(grid_file(tmp_path))
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(list(grid.cells), store, benchmark=grid.name, device=torch.device("cpu"), progress=False,
                          labels=grid.labels, expected=grid.expected, command="robench run fake.yaml")
        numbers = {}
        for key in result.computed:
            record = store.cell(key)
            numbers[(record.spec["defense"], record.spec["attack"])] = record.summary
        paths = write_paper_report(store, paper_dir(tmp_path), tmp_path / "out")
    assert [p.name for p in paths] == ["fake_table.csv", "fake_table.md"]
    pgd = str(grid.cells[1].attack)
    expect = {
        ("None", "PGD"): 100 * numbers[("none", pgd)]["robust_acc"],
        ("None", "Natural"): 100 * numbers[("none", pgd)]["clean_acc"],
        ("None", "FGSM"): 100 * numbers[("none", "fgsm")]["robust_acc"],
        ("Bits", "PGD"): 100 * numbers[("bit-depth:bits=3", pgd)]["robust_acc"],
        ("Bits", "FGSM"): 100 * numbers[("bit-depth:bits=3", "fgsm")]["robust_acc"],
    }
    assert len({round(v, 6) for k, v in expect.items() if k[1] != "Natural"}) == 4, "distinct numbers catch swaps"
    with open(tmp_path / "out" / "fake_table.csv") as handle:
        rows = {(r["Dataset"], r["Defense"], r["paper_column"]): r for r in csv.DictReader(handle)}
    for (defense, column), value in expect.items():
        row = rows[("Synth", defense, column)]
        assert float(row["robench"]) == pytest.approx(value) and row["robench_n"] == "48"
    assert rows[("Synth", "Bits", "PGD")]["paper"] == "32.00" and rows[("Synth", "None", "Natural")]["paper"] == "91.00"
    assert rows[("Synth", "Pending", "PGD")]["robench_status"] == "missing"
    assert rows[("Synth", "Pending", "PGD")]["robench_reason"] == "defense 'not-yet-registered' is not registered"
    assert rows[("Other", "None", "PGD")]["robench_status"] == "" and rows[("Other", "None", "PGD")]["robench"] == ""

    markdown = (tmp_path / "out" / "fake_table.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["Dataset", "Defense", "Natural", "Natural (paper)", "PGD", "PGD (paper)", "FGSM", "FGSM (paper)"]
    cells = {tuple(c[:2]): dict(zip(header, c)) for c in ([x.strip() for x in line.strip("|").split("|")]
                                                           for line in table[2:])}
    assert cells[("Synth", "Bits")]["PGD"] == f"{expect[('Bits', 'PGD')]:.1f} (n=48)"
    assert cells[("Synth", "Bits")]["PGD (paper)"] == "32.00"
    assert cells[("Synth", "None")]["Natural"] == f"{expect[('None', 'Natural')]:.1f} (n=48)"
    assert cells[("Synth", "Pending")]["FGSM"] == "missing" and cells[("Other", "None")]["PGD"] == "—"
    assert "- n: 48\n" in markdown and "robench run fake.yaml" in markdown and "Fake et al. Table 1" in markdown


def test_paper_report_refuses_labels_that_fit_no_row_and_two_cells_for_one_number(tmp_path):
    table = read_paper_tables(paper_dir(tmp_path), {"fake_table": {"Dataset", "Defense"}})["fake_table"]
    assert table.keys == ("Dataset", "Defense") and table.values == ("Natural", "PGD", "FGSM")
    nowhere = Entry("b", "k1", {"table": "fake_table", "row": {"Defense": "Nope"}, "robust": "PGD"}, None, "absent")
    with pytest.raises(PaperReportError, match="match 0 rows"):
        layout(table, [nowhere])
    twice = [Entry("b", key, {"table": "fake_table", "row": {"Dataset": "Synth", "Defense": "None"}, "robust": "PGD"},
                   None, "absent") for key in ("k1", "k2")]
    with pytest.raises(PaperReportError, match="claimed by two cells"):
        layout(table, twice)


def test_model_cards_of_the_checkpoints_used_are_in_the_header(tmp_path, monkeypatch):
    from robench import paper

    ckpt = tmp_path / "target.pt"
    ckpt.write_bytes(b"weights")
    ckpt.with_suffix(".json").write_text(json.dumps({"recipe": "at", "epochs": 3, "sha256": "ab" * 32}))
    model = str(parse_spec(f'resnet18:weights="{ckpt}"'))  # provenance is keyed by canonical specs
    record = type("R", (), {"spec": {"model": model, "defense": "none"},
                            "provenance": {"checkpoints": {model: {str(ckpt): "ab" * 32}}}})
    (line,) = paper._model_cards([record])
    assert line.startswith(f"`{ckpt}` (sha256 {'ab' * 6})") and "recipe=at" in line and "epochs=3" in line
    record.provenance = {"checkpoints": {model: {str(ckpt): "cd" * 32}}}
    assert "describes another file" in paper._model_cards([record])[0]


@pytest.mark.parametrize("paper_name, name", [("dir2023", n) for n in DIR2023] + [("rdp2022", n) for n in RDP2022_TABLES])
def test_every_paper_benchmark_loads_expands_and_labels_printed_numbers(paper_name, name):
    grid = load_benchmark(name)
    assert grid.cells and grid.labels and grid.name == name
    tables = read_paper_tables(paper_folder(paper_name), {
        label["table"]: set(label.get("row", {})) for labels in grid.labels.values() for label in labels
    })
    for table in {label["table"] for labels in grid.labels.values() for label in labels}:
        entries = [Entry(name, str(i), label, None, "not trained here")
                   for i, cell in enumerate(grid.cells) for label in grid.labels.get(cell, ()) if label["table"] == table]
        frame = layout(tables[table], entries)  # raises unless every label names one row and a value column
        assert (frame["robench_status"] == "missing").sum() >= len(entries)
    for cell in grid.cells:  # every cell runs or is missing for a declared reason; nothing is left undecided
        assert missing_reason(cell, grid.expected) or all(
            spec.name in registry.names(kind)
            for kind, spec in (("models", cell.model), ("defenses", cell.defense), ("attacks", cell.attack))
        )


def test_dir2023_entry_points_resolve_and_ship_the_paper_tables():
    for name in DIR2023:
        assert registry.benchmark_path(name).is_file()
    shipped = sorted(p.name for p in paper_folder("dir2023").glob("*.csv"))
    assert shipped == ["dir_ablation_mask_ratio.csv", "dir_table1_whitebox.csv", "dir_table2_transfer_to_trades_mart.csv",
                       "dir_table3_adaptive_bpda_eot.csv", "dir_table4_natural_target_and_time.csv",
                       "dir_table5_denoiser_depth.csv", "dir_text_results.csv"]
    with pytest.raises(PaperReportError, match="ships them for: dir2023, rdp2022"):
        paper_folder("rdp2099")


def test_rdp2022_covers_every_printed_number_of_tables_1_to_4_except_averages():
    tables = read_paper_tables(paper_folder("rdp2022"), {"rdp_table1_error_rates": {"source_model", "Defense"},
                                                          "rdp_table4_whitebox_targeted_pgd10": {"Defense"}})
    claimed: dict[str, set] = {}
    for name in RDP2022_TABLES:
        grid = load_benchmark(name)
        for labels in grid.labels.values():
            for label in labels:
                for metric in ("robust", "clean"):
                    if metric in label:
                        claimed.setdefault(label["table"], set()).add((tuple(sorted(label["row"].items())), label[metric]))
    for table in ("rdp_table1_error_rates", "rdp_table2_clean_accuracy", "rdp_table3_bpda_tidim",
                  "rdp_table4_whitebox_targeted_pgd10"):
        unclaimed = [(row, column) for row in tables[table].rows for column in tables[table].values
                     if column != "Average" and not any(
                         column == claimed_column and set(items) <= set(row.items())
                         for items, claimed_column in claimed[table])]
        assert not unclaimed, f"{table}: unclaimed {unclaimed[:3]}"
    sweep = load_benchmark("rdp2022-sweep")
    assert sorted({round(c.threat.eps * 255) for c in sweep.cells}) == [1, 2, 4, 8, 12, 16]


def test_a_table_in_error_rates_prints_100_minus_the_accuracy_over_all_images(tmp_path):
    grid = load_benchmark(grid_file(tmp_path))
    folder = paper_dir(tmp_path)
    (folder / "units.yaml").write_text("fake_table: error-rate\n")
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(list(grid.cells), store, benchmark=grid.name, device=torch.device("cpu"), progress=False,
                          labels=grid.labels, expected=grid.expected, command="robench run fake.yaml")
        summaries = {(store.cell(k).spec["defense"], store.cell(k).spec["attack"]): store.cell(k).summary
                     for k in result.computed}
        write_paper_report(store, folder, tmp_path / "out")
    with open(tmp_path / "out" / "fake_table.csv") as handle:
        rows = {(r["Defense"], r["paper_column"]): r for r in csv.DictReader(handle) if r["Dataset"] == "Synth"}
    summary = summaries[("none", "fgsm")]
    fgsm = rows[("None", "FGSM")]
    assert float(fgsm["robench"]) == pytest.approx(100 - 100 * summary["robust_correct"] / summary["n"])
    assert float(fgsm["robench_ci_low"]) <= float(fgsm["robench"]) <= float(fgsm["robench_ci_high"])
    assert fgsm["robench_unit"] == "error-rate"
    assert "error rate in % (100 minus the accuracy" in (tmp_path / "out" / "fake_table.md").read_text()
    (folder / "units.yaml").write_text("fake_table: furlongs\n")
    with pytest.raises(PaperReportError, match="error-rate"):
        read_paper_tables(folder)


def test_rdp2022_tables_declare_their_units():
    tables = read_paper_tables(paper_folder("rdp2022"))
    assert tables["rdp_table1_error_rates"].unit == "error-rate"
    assert tables["rdp_table2_clean_accuracy"].unit == "accuracy"
    assert tables["rdp_table4_whitebox_targeted_pgd10"].unit == "success-rate"
