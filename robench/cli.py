"""The ``robench`` command line: ls, run, leaderboard, report, show."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import click
from tabulate import tabulate

from robench import registry
from robench.grid import Benchmark, adhoc_name, expand, load_benchmark
from robench.paper import PaperReportError, paper_folder, write_paper_report
from robench.report import leaderboard, render_markdown, write_leaderboard
from robench.resolve import ConfigError
from robench.env import pick_device
from robench.runner import run_grid
from robench.spec import SpecError
from robench.store import DEFAULT_RESULTS, Store, store_in
from robench.train.command import train_command

STORE_HELP = f"Result store (default: robench.sqlite in the results folder, {DEFAULT_RESULTS}/)."
USAGE_ERRORS = (SpecError, ConfigError, registry.PluginError, FileNotFoundError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench")
def main():
    """robench: benchmark adversarial purification defenses against strong attacks."""


@main.command("ls")
@click.argument("kind", type=click.Choice(list(registry.GROUPS)), default="defenses")
def ls_command(kind):
    """List registered plugins of one KIND with their attributes and providers."""
    rows = []
    for name in registry.names(kind):
        try:
            record = registry.info(kind, name)
            obj = registry.load(kind, name)
            rows.append([name, record.value, _attributes(kind, obj), record.provider])
        except registry.PluginError as err:
            rows.append([name, "", f"ERROR: {err}", ""])
    click.echo(tabulate(rows, headers=["name", "object", "attributes", "provided by"], tablefmt="simple"))


def _attributes(kind: str, obj) -> str:
    if kind == "defenses":
        text = f"stochastic={obj.stochastic} differentiable={obj.differentiable} version={obj.version}"
        # a learned defense that is randomly initialised unless given weights declares needs_training
        return text + (" learned: untrained without weights=" if getattr(obj, "needs_training", False) else "")
    if kind == "attacks":
        return f"kind={obj.kind} norms={','.join(obj.norms)} version={obj.version}"
    if kind == "benchmarks":
        return _first_sentence(load_benchmark(str(obj)).description)
    return _first_sentence(obj.__doc__ or "")


def _first_sentence(text: str, width: int = 80) -> str:
    sentence = re.split(r"(?<!\bal)\. ", " ".join(text.split()))[0]  # "et al. 2016" ends no sentence
    return sentence if len(sentence) <= width else sentence[: width - 3] + "..."


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
@click.option("--batch-size", type=int, help="Examples per batch.")
@click.option("--name", help="Benchmark name for an ad-hoc grid (default: adhoc-<dataset>-<hash of its cells>).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder with the datasets (or set ROBENCH_DATA).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def run_command(benchmark, dataset, models, defenses, attacks, settings, eps, norm, sources, attack_defense,
                restore_from, n, sample_seed, seed, draws, eot, batch_size, name, store_path, results_dir, data_root,
                device, progress):
    """Run a registered BENCHMARK (or grid file), or an ad-hoc grid given by options."""
    store_path = store_path or store_in(results_dir)
    if data_root:
        os.environ["ROBENCH_DATA"] = data_root
    scalars = {"dataset": dataset, "n": n, "sample_seed": sample_seed, "seed": seed, "draws": draws, "eot": eot,
               "batch_size": batch_size, "norm": norm, "attack_defense": attack_defense, "restore_from": restore_from,
               "sources": list(sources) or None}
    axes = {"models": list(models), "defenses": list(defenses), "attacks": list(attacks),
            "settings": list(settings), "eps": list(eps)}
    try:
        if benchmark:
            grid = load_benchmark(benchmark, {**scalars, **{k: v for k, v in axes.items() if v}})
        else:  # an ad-hoc grid declares nothing that may be missing: every unknown name is an error
            cells = expand({k: v for k, v in axes.items() if v}, scalars, where="command line")
            grid = Benchmark(name or adhoc_name(cells), "", cells)
        title = grid.name  # a benchmark file may name itself
        torch_device = pick_device(device)
        with Store(store_path) as store:
            command = "robench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            result = run_grid(list(grid.cells), store, benchmark=title, device=torch_device, command=command,
                              progress=progress, labels=grid.labels, expected=grid.expected)
            csv_path, md_path = write_leaderboard(store, title, results_dir)
            frame = leaderboard(store, title)
    except USAGE_ERRORS as err:
        raise click.UsageError(str(err)) from None
    click.echo(render_markdown(frame, title=title, commands=[]))
    click.echo(f"{len(result.computed)} cells computed, {len(result.cached)} found in the store, "
               f"{len(result.failed)} failed, {len(result.missing)} missing. Leaderboard: {csv_path}, {md_path}")
    for key, message in result.failed.items():
        click.echo(f"FAILED {key[:12]}: {message}", err=True)
    if not result.ok:
        sys.exit(1)


@main.command("leaderboard")
@click.argument("benchmarks", nargs=-1)
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=str(DEFAULT_RESULTS), show_default=True)
def leaderboard_command(benchmarks, store_path, results_dir):
    """Regenerate leaderboards (all benchmarks in the store, or the named ones) from the store alone."""
    store_path = store_path or store_in(results_dir)
    if not Path(store_path).is_file():
        raise click.UsageError(f"no store at {store_path}; run a benchmark first or pass --store PATH")
    with Store(store_path) as store:
        names = list(benchmarks) or store.benchmarks()
        unknown = set(names) - set(store.benchmarks())
        if unknown:
            raise click.UsageError(f"no cells stored for {', '.join(sorted(unknown))}; stored: {', '.join(store.benchmarks())}")
        for name in names:
            csv_path, md_path = write_leaderboard(store, name, results_dir)
            click.echo(f"{name}: {csv_path}, {md_path}")


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
    store_path = store_path or store_in(results_dir)
    if not Path(store_path).is_file():
        raise click.UsageError(f"no store at {store_path}; run the {paper} benchmarks first or pass --store PATH")
    try:
        folder = Path(paper_dir) if paper_dir else paper_folder(paper)
        with Store(store_path) as store:
            paths = write_paper_report(store, folder, Path(results_dir) / paper, list(benchmarks) or None)
    except PaperReportError as err:
        raise click.UsageError(str(err)) from None
    for path in paths:
        click.echo(str(path))


@main.command("show")
@click.argument("key")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help=STORE_HELP)
@click.option("--examples/--no-examples", default=False, help="Also print the per-example outcomes.")
def show_command(key, store_path, examples):
    """Show one stored cell (KEY or a unique prefix): spec, summary, flags, provenance."""
    store_path = store_path or store_in(DEFAULT_RESULTS)
    with Store(store_path) as store:
        found = store.find_cells(key)
        if len(found) != 1:
            raise click.UsageError(f"{len(found)} cells match {key!r}; give a longer key prefix")
        record = found[0]
        payload = {"key": record.key, "status": record.status, "spec": record.spec, "summary": record.summary,
                   "flags": record.flags, "error": record.error, "wall_s": record.wall_s,
                   "provenance": record.provenance}
        if examples:
            payload["examples"] = store.examples(record.key)
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


main.add_command(train_command)

if __name__ == "__main__":
    main()
