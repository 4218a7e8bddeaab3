"""The ``robench`` command line: ls, run, leaderboard, site, report, show, train.

Only click, the registry and the store are imported up front: ``robench --help`` and
``robench ls`` never import torch. Each command imports what it computes with, and ``train``
is loaded when it is called (:class:`LazyGroup`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import sys
from importlib import import_module
from pathlib import Path

import click
from tabulate import tabulate

from robench import registry
from robench.errors import ConfigError
from robench.spec import SpecError, brief
from robench.store import DEFAULT_RESULTS, Store, StoreError, store_in

STORE_HELP = f"Result store (default: robench.sqlite in the results folder, {DEFAULT_RESULTS}/)."
USAGE_ERRORS = (SpecError, ConfigError, registry.PluginError, FileNotFoundError)
INTERRUPTED = 130  # the shell's exit code for Ctrl-C (128 + SIGINT)


class BatchSize(click.ParamType):
    """A positive number of examples per batch, or ``auto`` (robench.batch_size chooses one for the device)."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            self.fail(f"{brief(value)} is not a batch size; give a positive integer, or auto to choose the largest "
                      "that fits the device (GPU) or the fastest (CPU)", param, ctx)
        return size


class LazyGroup(click.Group):
    """A click group whose ``lazy`` subcommands (name -> (``module:attribute``, short help)) load when called."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoreError as err:  # a store that cannot be opened or read is bad input, in every command
            raise click.UsageError(str(err)) from None
        except sqlite3.DatabaseError as err:  # damage found while reading or writing
            raise click.UsageError(f"the result store is damaged ({err}); `robench verify --repair --store PATH` "
                                   "mends what it can") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, _, attribute = self.lazy[name][0].partition(":")
            self.add_command(getattr(import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = [
            (name, self.lazy[name][1] if name not in self.commands else self.commands[name].get_short_help_str(limit))
            for name in names
            if name not in self.commands or not self.commands[name].hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy={"train": ("robench.train.command:train_command", "Train a target model, or a learned defense.")},
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 done; 1 some cells failed; 2 bad input (nothing ran); 130 interrupted (rerun to resume).",
)
@click.version_option(package_name="robench")
def main():
    """robench: benchmark adversarial purification defenses against strong attacks."""


@main.command("ls")
@click.argument("kind", type=click.Choice(list(registry.GROUPS)), default="defenses")
@click.argument("name", required=False)
def ls_command(kind, name):
    """List the plugins of one KIND, or document plugin NAME (options, attributes, provider)."""
    from robench import describe

    if name:
        try:
            click.echo(describe.describe(kind, name), nl=False)
        except registry.PluginError as err:
            raise click.UsageError(str(err)) from None
        return
    rows = []
    for plugin in registry.names(kind):
        try:
            found = describe.summary(kind, plugin)
            rows.append([plugin, found.description, found.attribute_text(kind), registry.info(kind, plugin).provider])
        except registry.PluginError as err:  # a broken plugin shows up here instead of hiding the others
            rows.append([plugin, f"ERROR: {err}", "", ""])
    headers = ["name", "description", "attributes", "provided by"]
    rows = [[name, describe.wrap(text, 60), describe.wrap(attributes, 26), provider]
            for name, text, attributes, provider in rows]
    if kind not in describe.LISTED:
        rows, headers = [r[:2] + r[3:] for r in rows], headers[:2] + headers[3:]
    click.echo(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))


@main.command("run")
@click.argument("benchmark", required=False)
@click.option("--dataset", help="Dataset spec, e.g. cifar10.")
@click.option("--model", "models", multiple=True, help="Model spec (repeatable).")
@click.option("--defense", "defenses", multiple=True, help="Defense spec, e.g. jpeg:quality=75 (repeatable).")
@click.option("--attack", "attacks", multiple=True, help="Attack spec, e.g. pgd:steps=10 (repeatable).")
@click.option("--setting", "settings", multiple=True,
              help="adaptive | oblivious | transfer | surrogate-defense | restored.")
@click.option("--eps", "eps", multiple=True, help="Budget in [0,1] units, e.g. 8/255 (repeatable).")
@click.option("--norm", help="Linf or L2.")
@click.option("--source", "sources", multiple=True, help="Source model spec for transfer settings (repeatable).")
@click.option("--attack-defense", help="Attacker-side defense spec for the surrogate-defense setting.")
@click.option("--restore-from", help="Attack whose examples the defense restores in the restored setting (DIR Eq. 9).")
@click.option("-n", "n", type=int, help="Number of examples.")
@click.option("--sample-seed", type=int, help="Draw a seeded random subset instead of the first n examples.")
@click.option("--seed", type=int, help="Seed of the attack and defense randomness.")
@click.option("--draws", type=int, help="Re-scoring draws for stochastic defenses.")
@click.option("--eot", type=int, help="EOT draws in the adaptive view of stochastic defenses.")
@click.option("--batch-size", type=BatchSize(),
              help="Examples per batch, or auto: the largest that fits the GPU for the attack, the fastest on CPU.")
@click.option("--name", help="Benchmark name for an ad-hoc grid (default: adhoc-<dataset>-<hash of its cells>).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder with the datasets (or set ROBENCH_DATA).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where cells are computed: this process, or a Ray cluster (pip install 'robench[ray]').")
@click.option("--address", help="Ray cluster to join: auto, or ray://HOST:10001 (default: start a local one).")
@click.option("--gpus-per-cell", type=float, default=0, show_default=True, help="GPUs each Ray task declares.")
@click.option("--cpus-per-cell", type=float, default=1, show_default=True,
              help="CPUs each Ray task declares (and its torch threads).")
@click.option("--batches-per-task", type=int, help="Split a cell into Ray tasks of this many batches.")
@click.option("--cascade", is_flag=True, default=None,
              help="Run each attack only on the examples the attacks listed before it left robust (exact worst case).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (cells to compute, stored, missing; passes and time) and compute nothing.")
@click.option("--throughput", type=click.FloatRange(min=0, min_open=True),
              help="Forward passes per second for --dry-run's times (default: a short calibration here).")
def run_command(benchmark, dataset, models, defenses, attacks, settings, eps, norm, sources, attack_defense,
                restore_from, n, sample_seed, seed, draws, eot, batch_size, name, store_path, results_dir, data_root,
                device, progress, executor, address, gpus_per_cell, cpus_per_cell, batches_per_task, cascade,
                dry_run, throughput):
    """Run a registered BENCHMARK (or grid file), or an ad-hoc grid given by options."""
    from robench.destinations import check_results_folder
    from robench.env import pick_device
    from robench.executors import make_executor
    from robench.grid import Benchmark, adhoc_name, expand, load_benchmark
    from robench.render.term import render_term
    from robench.report import leaderboard, leaderboard_document, pivot_only, write_leaderboard
    from robench.runner import run_grid

    store_path = store_path if store_path is not None else store_in(results_dir)
    if data_root:
        os.environ["ROBENCH_DATA"] = data_root
    scalars = {"dataset": dataset, "n": n, "sample_seed": sample_seed, "seed": seed, "draws": draws, "eot": eot,
               "batch_size": batch_size, "norm": norm, "attack_defense": attack_defense, "restore_from": restore_from,
               "sources": list(sources) or None, "cascade": cascade}
    axes = {"models": list(models), "defenses": list(defenses), "attacks": list(attacks),
            "settings": list(settings), "eps": list(eps)}
    try:
        if benchmark:
            grid = load_benchmark(benchmark, {**scalars, **{k: v for k, v in axes.items() if v}})
        else:  # an ad-hoc grid declares nothing that may be missing: every unknown name is an error
            cells = expand({k: v for k, v in axes.items() if v}, scalars, where="command line")
            grid = Benchmark(name or adhoc_name(cells), "", cells)
        title = grid.name  # a benchmark file may name itself
        check_results_folder(results_dir, title)
        torch_device = pick_device(device)
        if dry_run:
            from robench.plan import plan_grid, render_plan

            plan = plan_grid(list(grid.cells), store_path, device=torch_device, expected=grid.expected,
                             throughput=throughput, benchmark=title)
            click.echo(render_plan(plan, title), nl=False)
            return
        ray_options = {"address": address, "gpus_per_cell": gpus_per_cell, "cpus_per_cell": cpus_per_cell,
                       "batches_per_task": batches_per_task}
        runner = make_executor(executor, **(ray_options if executor == "ray" else {}))
        with Store(store_path) as store:
            command = "robench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            result = run_grid(list(grid.cells), store, benchmark=title, device=torch_device, command=command,
                              progress=progress, labels=grid.labels, expected=grid.expected, executor=runner,
                              additive=not benchmark)
            csv_path, md_path = write_leaderboard(store, title, results_dir)
            frame = leaderboard(store, title)
    except USAGE_ERRORS as err:
        raise click.UsageError(str(err)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; every finished batch is kept in {store_path}: rerun the same command to resume",
                   err=True)
        sys.exit(INTERRUPTED)
    click.echo(render_term(pivot_only(leaderboard_document(frame, title=title, commands=[]))))
    _plots_note()
    click.echo(f"{len(result.computed)} cells computed, {len(result.cached)} found in the store, "
               f"{len(result.failed)} failed, {len(result.missing)} missing. Leaderboard: {csv_path}, {md_path}")
    for message, keys in _grouped(result.failed).items():
        click.echo(f"FAILED {_some(keys)}: {message}", err=True)
    if not result.ok:
        sys.exit(1)


@main.command("reproduce")
@click.argument("paper")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the benchmarks' cells are computed (see robench run).")
@click.option("--address", help="Ray cluster to join (see robench run).")
@click.option("--gpus-per-cell", type=float, help="GPUs each Ray task declares (see robench run).")
@click.option("--cpus-per-cell", type=float, help="CPUs each Ray task declares (see robench run).")
@click.option("--scale", type=click.Choice(["paper", "mini"]), default="paper", show_default=True,
              help="The paper's benchmarks, or their CPU-sized mini variants (<paper>-<table>-mini).")
@click.option("--dry-run", is_flag=True, help="Print the steps and each benchmark's plan with its cost; run nothing.")
@click.option("--throughput", type=click.FloatRange(min=0, min_open=True),
              help="Forward passes per second for --dry-run's times (default: a short calibration here).")
def reproduce_command(paper, store_path, results_dir, device, executor, address, gpus_per_cell, cpus_per_cell,
                      scale, dry_run, throughput):
    """Reproduce PAPER: train the checkpoints its benchmarks declare, run every benchmark, write its tables."""
    from robench.reproduce import plan_steps

    shared = (["--store", store_path] if store_path else []) + ["--results", results_dir]
    run_options = ["--device", device, "--executor", executor]
    for flag, value in (("--address", address), ("--gpus-per-cell", gpus_per_cell), ("--cpus-per-cell", cpus_per_cell)):
        run_options += [flag, str(value)] if value is not None else []
    try:
        names, steps = plan_steps(paper, run_options, shared, scale)
    except USAGE_ERRORS as err:
        raise click.UsageError(str(err)) from None
    for step in steps:
        click.echo(f"{'done' if step.done else 'todo'}  {step.command}")
    if dry_run:
        _plan_benchmarks(names, store_path or store_in(results_dir), device, throughput)
        return
    failed = []
    for step in steps:
        if step.done:
            continue
        click.echo(f"$ {step.command}", err=True)
        code = run_step(step.command)
        if code == 1 and step.command.startswith("robench run"):  # failed cells: the other benchmarks still run
            failed.append(step.command)
        elif code != 0:
            click.echo(f"stopped: `{step.command}` exited with {code}; rerun `robench reproduce {paper}` to resume",
                       err=True)
            sys.exit(code)
    if failed:
        click.echo(f"some cells failed in: {'; '.join(failed)}", err=True)
        sys.exit(1)


def run_step(command: str) -> int:
    """Run one ``robench ...`` command line with this Python; its exit code."""
    import subprocess

    return subprocess.call([sys.executable, "-m", "robench.cli", *shlex.split(command)[1:]])


def _plan_benchmarks(names: list[str], store_path, device: str, throughput: "float | None") -> None:
    from robench.env import pick_device
    from robench.grid import load_benchmark
    from robench.plan import plan_grid, render_plan

    try:
        for name in names:
            grid = load_benchmark(name)
            plan = plan_grid(list(grid.cells), store_path, device=pick_device(device), expected=grid.expected,
                             throughput=throughput)
            click.echo("\n" + render_plan(plan, grid.name, list_missing=False), nl=False)
    except USAGE_ERRORS as err:
        raise click.UsageError(str(err)) from None
    click.echo("\ncells that need a checkpoint trained above count as missing until it exists "
               "(robench run BENCHMARK --dry-run lists them with their reasons)")


def _grouped(messages: dict[str, str]) -> dict[str, list[str]]:
    """Cell keys by message, so a reason shared by many cells is printed once."""
    grouped: dict[str, list[str]] = {}
    for key, message in messages.items():
        grouped.setdefault(message, []).append(key[:12])
    return grouped


def _some(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} cell{'s' * (len(keys) != 1)} ({', '.join(keys[:shown])}{more})"


def existing_store(store_path: "str | None", results_dir: "str | Path") -> Store:
    """The store a read-only command opens; never created: a missing one is a usage error."""
    return Store(store_path if store_path is not None else store_in(results_dir), create=False)


@main.command("leaderboard")
@click.argument("benchmarks", nargs=-1)
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--format", "fmt", type=click.Choice(["term", "md", "csv", "html"]), default="term", show_default=True,
              help="What to print: terminal text, Markdown or CSV; html writes the site under RESULTS/site/.")
@click.option("--view", type=click.Choice(["pivot", "full"]), default="pivot", show_default=True,
              help="Terminal view: defenses x attacks (pivot) or also every cell (full).")
@click.option("--width", type=click.IntRange(60, None), default=100, show_default=True, help="Terminal width.")
def leaderboard_command(benchmarks, store_path, results_dir, fmt, view, width):
    """Regenerate leaderboards (all benchmarks in the store, or the named ones) from the store alone, and print them.

    Writes RESULTS/<benchmark>/leaderboard.csv, .md and figures (PNG and SVG) for each benchmark.
    """
    from robench.destinations import check_results_folder
    from robench.render import render
    from robench.report import leaderboard, leaderboard_document, pivot_only, write_leaderboard

    with existing_store(store_path, results_dir) as store:
        names = _stored(store, benchmarks)
        try:
            for name in names:
                check_results_folder(results_dir, name)
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
        for name in names:
            written = write_leaderboard(store, name, results_dir)
            if fmt == "html":
                continue
            document = leaderboard_document(leaderboard(store, name), title=f"robench leaderboard: {name}",
                                            commands=store.commands(name))
            if fmt == "term":
                click.echo(render(document if view == "full" else pivot_only(document), "term", width=width))
            else:
                click.echo(render(document, fmt), nl=False)
            click.echo(f"{name}: {', '.join(str(p) for p in written)}", err=True)
        if fmt == "html":
            from robench.site import SITE, write_site

            click.echo(str(write_site(store, Path(results_dir) / SITE, names)))
    _plots_note()


@main.command("site")
@click.argument("benchmarks", nargs=-1)
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Site folder (default: RESULTS/site).")
def site_command(benchmarks, store_path, results_dir, out):
    """Write the static results site (index, benchmarks, paper tables, cells) from the store alone."""
    from robench.site import SITE, write_site

    with existing_store(store_path, results_dir) as store:
        names = _stored(store, benchmarks)
        click.echo(str(write_site(store, Path(out) if out else Path(results_dir) / SITE, names)))
    _plots_note()


def _stored(store: Store, benchmarks: tuple[str, ...]) -> list[str]:
    """The named benchmarks (default: every stored one), each checked to have cells in the store."""
    names = list(benchmarks) or store.benchmarks()
    unknown = set(names) - set(store.benchmarks())
    if unknown:
        raise click.UsageError(f"no cells stored for {', '.join(sorted(unknown))}; stored: {', '.join(store.benchmarks())}")
    return names


def _plots_note() -> None:
    from robench.plots import plots_note

    if plots_note():
        click.echo(plots_note(), err=True)


@main.command("report")
@click.argument("paper")
@click.option("--benchmark", "benchmarks", multiple=True,
              help="Use only this benchmark's cells (repeatable; default: every stored benchmark labelled for PAPER).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--paper-dir", type=click.Path(file_okay=False, exists=True),
              help="Folder of the paper's table CSVs (default: the copy shipped with PAPER's benchmarks).")
def report_command(paper, benchmarks, store_path, results_dir, paper_dir):
    """Write PAPER's tables (e.g. dir2023) in the paper's layout, robench's numbers beside the paper's."""
    from robench.destinations import check_results_folder
    from robench.paper import PaperReportError, paper_entries, paper_folder, write_paper_report

    try:
        folder = Path(paper_dir) if paper_dir else paper_folder(paper)
        check_results_folder(results_dir, paper)
        with existing_store(store_path, results_dir) as store:
            if not paper_entries(store, {p.stem for p in folder.glob("*.csv")}, list(benchmarks) or None):
                raise click.UsageError(_nothing_to_report(paper, folder, store.path, benchmarks))
            paths = write_paper_report(store, folder, Path(results_dir) / paper, list(benchmarks) or None)
    except (PaperReportError, ConfigError) as err:
        raise click.UsageError(str(err)) from None
    for written in paths:
        click.echo(str(written))


def _nothing_to_report(paper: str, folder: Path, store_path: Path, benchmarks: tuple[str, ...]) -> str:
    where = f"the cells of {', '.join(benchmarks)}" if benchmarks else f"{store_path}"
    shipped = [n for n in registry.names("benchmarks") if registry.benchmark_path(n).parent == folder.parent]
    how = (f"compute them first, e.g. `robench run {shipped[0]}` (the {paper} benchmarks: {', '.join(shipped)})"
           if shipped else "compute them first by running the benchmarks whose grid files label cells for these tables")
    return f"no cell in {where} fills a {paper} table, so there is nothing to report; {how}"


@main.command("show")
@click.argument("key")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the stored record as raw JSON.")
@click.option("--examples/--no-examples", default=False, help="Also print the per-example outcomes.")
def show_command(key, store_path, as_json, examples):
    """Show one stored cell (KEY or a unique prefix): spec, accuracies with CI, flags, timing, provenance."""
    from robench.show import render_cell, render_examples

    if not re.fullmatch(r"[0-9a-fA-F]{0,64}", key):
        raise click.UsageError(f"{brief(key)} is not a cell key: keys are hexadecimal (the key column of a leaderboard)")
    key = key.lower()
    with existing_store(store_path, DEFAULT_RESULTS) as store:
        found = store.find_cells(key)
        if not found:
            raise click.UsageError(f"no stored cell has a key starting with {key!r}; the key column of a "
                                   f"leaderboard (robench leaderboard) lists them")
        if len(found) > 1:
            raise click.UsageError(f"{len(found)} cells have keys starting with {key!r} "
                                   f"({', '.join(r.key[:12] for r in found[:5])}); give a longer key prefix")
        record = found[0]
        rows = store.examples(record.key) if examples else None
    if as_json:
        payload = {"key": record.key, "status": record.status, "spec": record.spec, "summary": record.summary,
                   "flags": record.flags, "error": record.error, "wall_s": record.wall_s,
                   "provenance": record.provenance}
        if rows is not None:
            payload["examples"] = rows
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    click.echo(render_cell(record))
    if rows is not None:
        click.echo(render_examples(rows))


@main.command("verify")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--repair", is_flag=True,
              help="Restore a damaged schema, rebuild indexes, salvage unreadable pages, recompute damaged cells.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder with the datasets (or set ROBENCH_DATA).")
@click.option("--device", default="auto", show_default=True, help="Device for recomputing with --repair.")
def verify_command(store_path, results_dir, repair, data_root, device):
    """Check a store for damage (SQLite's integrity check, done cells whose rows disagree with their summary).

    Exits 0 when the store is sound (or was fully repaired), 1 when damage remains.
    """
    from robench.verify import verify

    if data_root:
        os.environ["ROBENCH_DATA"] = data_root
    torch_device = None
    if repair:
        from robench.env import pick_device

        try:
            torch_device = pick_device(device)
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
    path = store_path if store_path is not None else store_in(results_dir)
    command = "robench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    found = verify(path, repair=repair, device=torch_device, command=command)
    for line in found.lines(path):
        click.echo(line)
    if not found.sound:
        sys.exit(1)


if __name__ == "__main__":
    main()
