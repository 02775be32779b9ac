"""``--readme``: the committed runs' results, generated between markers in two files: README.md at a
glance (each run's verdicts, with links to its report and to the full page) and docs/results.md in
full (the rule, and each run's verdicts and main tables). ``--check``: whether both are still what
the runs give. Links are relative to the file that holds them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench import stats
from bench.report.markdown import glance_run, results_run
from bench.report.runs import is_run, load
from bench.report.verdicts import rule
from impls.files import write_text

README = Path(__file__).resolve().parents[2] / "README.md"
RESULTS_PAGE = Path("docs") / "results.md"  # under the README's folder
RESULTS_TITLE = "# Results in full"
COMMAND = "python -m bench.report --readme"
BLOCK = re.compile(
    r"<!-- begin generated: python -m bench\.report --readme (?P<runs>[^>]*?) -->\n.*?<!-- end generated -->",
    re.DOTALL,
)
END = "<!-- end generated -->"


def results_page(readme: Path = README) -> Path:
    return readme.parent / RESULTS_PAGE


def _check_runs(links: list[str], root: Path) -> None:
    """Refuse (ValueError) a run that is not a measured run committed under ``root``/results."""
    missing = [link for link in links if not is_run(root / link)]
    if missing:
        raise ValueError(f"not a run folder (no benchmark.json or progress.jsonl): {', '.join(missing)}")
    results = (root / "results").resolve()
    outside = [link for link in links if results not in (root / link).resolve().parents]
    if outside:
        raise ValueError(
            f"{', '.join(outside)}: not under {root / 'results'}; the README links only to the runs "
            "committed there: move the run into results/ first"
        )
    empty = [link for link in links if load(root / link)[0].empty]
    if empty:
        raise ValueError(
            f"{', '.join(empty)}: no measured case (an interrupted or refused run); the README shows "
            "measured runs only: name a run with one"
        )


def _begin(links: list[str]) -> str:
    return f"<!-- begin generated: {COMMAND} {' '.join(links)} -->"


def _relative(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


def glance_block(links: list[str], readme: Path) -> str:
    """README.md's generated results, markers included; ``links``: run folders relative to its folder."""
    full = _relative(results_page(readme), readme)
    intro = f"The verdicts of the committed runs; the rule behind them and the main tables: [{full}]({full})."
    runs = [glance_run(readme.parent / link, link, full) for link in links]
    return "\n".join([_begin(links), "", intro, "", *runs]) + END


def results_block(links: list[str], readme: Path) -> str:
    """docs/results.md's generated results, markers included: the rule, and each run in full."""
    page = results_page(readme)
    runs = [results_run(readme.parent / link, _relative(readme.parent / link, page)) for link in links]
    return "\n".join([_begin(links), "", rule(stats.MARGIN, stats.RUN_SPREAD), "", *runs]) + END


def _blocks(links: list[str], readme: Path) -> dict[Path, str]:
    """Each file's generated results; a ValueError, before anything is written, for a run it cannot show."""
    _check_runs(links, readme.parent)
    return {readme: glance_block(links, readme), results_page(readme): results_block(links, readme)}


def _marked(text: str, file: Path) -> re.Match:
    match = BLOCK.search(text)
    if match is None:
        raise ValueError(f"{file} has no '<!-- begin generated: {COMMAND} ... -->' section")
    return match


def readme_runs(readme: Path = README) -> list[str]:
    """The run folders that the README's begin marker names."""
    return _marked(readme.read_text(), readme)["runs"].split()


def _link(run_dir: Path, root: Path) -> str:
    """A run folder as the README names it: relative to the README's folder where it is under it."""
    try:
        return Path(run_dir).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(run_dir).as_posix()


def _with_block(file: Path, block: str) -> str:
    """``file``'s text with ``block`` for its generated results; a new results page: a title and it."""
    if not file.exists() and file.name == RESULTS_PAGE.name:
        return f"{RESULTS_TITLE}\n\n{block}\n"
    text = file.read_text()
    match = _marked(text, file)
    return text[: match.start()] + block + text[match.end() :]


def write_readme(run_dirs: list[Path] | None = None, readme: Path = README) -> None:
    """Write the generated results of ``run_dirs`` (default: the runs the README names) into the
    README and its results page (made where it is missing)."""
    links = [_link(d, readme.parent) for d in run_dirs] if run_dirs else readme_runs(readme)
    _marked(readme.read_text(), readme)
    texts = {file: _with_block(file, block) for file, block in _blocks(links, readme).items()}
    for file, text in texts.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        write_text(file, text)


def stale(readme: Path = README) -> list[Path]:
    """The files (the README, its results page) whose generated results are not what ``--readme``
    would write from the runs the README names."""
    found = []
    for file, block in _blocks(readme_runs(readme), readme).items():
        if not file.exists() or _marked(file.read_text(), file)[0] != block:
            found.append(file)
    return found


def readme_matches(readme: Path = README) -> bool:
    """Whether the README's and its results page's generated results are what ``--readme`` writes."""
    return not stale(readme)
