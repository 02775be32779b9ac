"""The synthetic cells, the segmentation measures, and a training run that learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from bench import cells, train_cells
from bench.train_cells import TrainingSettings, _data, train, trajectories_agree


def test_generator_is_seeded_and_parts_touching_cells() -> None:
    a, b = cells.generate(3, 64, seed=5), cells.generate(3, 64, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (3, 1, 64, 64) and a.instances.shape == (3, 64, 64)
    assert not np.array_equal(a.images, cells.generate(3, 64, seed=6).images)
    for instances in a.instances:
        grown = ndimage.grey_dilation(instances, size=3)
        # no cell pixel has a pixel of another cell among its 8 neighbours
        assert not ((instances > 0) & (grown != instances) & (grown > 0)).any()
    assert sum(len(cells.touching_pairs(i)) for i in a.instances) >= 6


def test_volumes_are_seeded_and_part_touching_blobs() -> None:
    a, b = cells.generate(2, 32, seed=5, dims=3), cells.generate(2, 32, seed=5, dims=3)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert a.images.shape == (2, 1, 32, 32, 32) and a.instances.shape == (2, 32, 32, 32)
    assert not np.array_equal(a.images, cells.generate(2, 32, seed=6, dims=3).images)
    for instances in a.instances:
        grown = ndimage.grey_dilation(instances, size=3)
        # no cell voxel has a voxel of another cell among its 26 neighbours
        assert not ((instances > 0) & (grown != instances) & (grown > 0)).any()
        assert 0.1 < (instances > 0).mean() < 0.4
    assert sum(len(cells.touching_pairs(i)) for i in a.instances) >= 6
    separated, touching = cells.separated_fraction(a.instances[0] > 0, a.instances[0])
    assert separated == touching > 0
    merged = ndimage.binary_closing(a.instances[0] > 0, np.ones((3, 3, 3)))  # closes the parting surfaces
    assert cells.separated_fraction(merged, a.instances[0])[0] < touching / 2


def test_measures_on_the_truth_and_on_merged_cells() -> None:
    instances = cells.generate(1, 96, seed=0).instances[0]
    separated, touching = cells.separated_fraction(instances > 0, instances)
    assert separated == touching > 0
    merged = ndimage.binary_closing(instances > 0, np.ones((3, 3)))  # closes the parting lines
    assert cells.separated_fraction(merged, instances)[0] < touching / 2
    assert cells.dice(instances > 0, instances > 0) == 1.0
    assert cells.dice(np.zeros_like(instances), instances > 0) == 0.0


def test_it_learns_and_border_weights_separate_touching_cells() -> None:
    """A small budget on a 2-core CPU: width 8, 200 steps, a few seconds per run."""
    settings = TrainingSettings(paths=("torch-eager", "jax"), steps=200, width=8, depth=3, size=64, batch=8)
    data = _data(settings)
    runs = {
        (path, weighting): train(settings, path, weighting, data)
        for weighting in ("border weights", "class balance only")
        for path in settings.paths
    }
    for outcome in runs.values():
        assert outcome.dice > 0.9, (outcome.path, outcome.weighting, outcome.dice)
    with_border = runs[("torch-eager", "border weights")]
    without = runs[("torch-eager", "class balance only")]
    assert with_border.separated / with_border.touching > 0.4
    assert with_border.separated > 5 * without.separated
    assert trajectories_agree(list(runs.values()))
    assert runs[("jax", "border weights")].losses[0] == pytest.approx(with_border.losses[0], rel=1e-5)


# -- the command --------------------------------------------------------------------------------

TINY = [
    "--paths",
    "torch-eager",
    "--steps",
    "2",
    "--width",
    "4",
    "--depth",
    "1",
    "--size",
    "16",
    "--batch",
    "2",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps 0: expected a whole number >= 1"),
        (["--steps", "-5"], "--steps -5: expected a whole number >= 1"),
        (["--batch", "0"], "--batch 0: expected a whole number >= 1"),
        (["--paths", "torch-eagr"], "--paths torch-eagr: expected some of torch-eager,"),
        (["--paths", ""], "--paths: none given; expected some of torch-eager"),
        (["--paths", "onnxruntime"], "--paths onnxruntime: an inference runtime trains nothing"),
        (["--paths", "jax,jax"], "--paths jax,jax: a path given twice"),
        (["--size", "30"], "--size 30: UNetSpec(depth=3, padding='same'): side 30 is not a valid input size"),
        (["--device", "cuda"], "--device cuda: no CUDA device on this machine; devices here: cpu"),
        (["--device", "gpu"], "--device gpu: expected cpu, cuda or cuda:N"),
        (["--batch", "64"], "--batch 64: more than the 32 held-out images"),
        (["--dims", "3", "--batch", "33"], "--batch 33: more than the 32 held-out images"),
        (["--seed", "-1"], "--seed -1: expected a whole number >= 0"),
        (["--dims", "4"], "--dims 4: expected 2 (images) or 3 (volumes)"),
        (["--results-dir", "{file}"], "--results-dir {file}: {file} is a file, not a folder"),
    ],
)
def test_the_command_refuses_bad_options_before_training(tmp_path, capsys, args, message) -> None:
    """Exit 2 and one line, before any data is made or a folder written."""
    afile = tmp_path / "a file"
    afile.write_text("the user's")
    args = [arg.format(file=afile) for arg in args]
    if "--results-dir" not in args:
        args += ["--results-dir", str(tmp_path)]
    assert train_cells.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: " + message.format(file=afile)), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"] and afile.read_text() == "the user's"


def test_the_help_describes_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        train_cells.main(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--paths",
        "--steps",
        "--width",
        "--depth",
        "--size",
        "--batch",
        "--seed",
        "--device",
        "--results-dir",
    ):
        assert option in text
    assert "(default 300)" in text and "Adam steps" in text


def test_volumes_train_the_same_in_each_path(tmp_path) -> None:
    """The smoke version of ``--dims 3`` (the full one, Dice above 0.9 within 10 minutes, is run by
    hand: docs/testing.md): a 3D U-Net with instance norm and leaky ReLU, trained from the same
    weights on the same volumes by torch eager and jax, whose losses agree from the first step."""
    args = ["--dims", "3", "--paths", "torch-eager,jax", "--steps", "3", "--width", "4", "--depth", "2"]
    assert train_cells.main([*args, "--size", "16", "--results-dir", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    record = json.loads((run / "outcomes.json").read_text())
    assert record["config"]["dims"] == 3 and record["config"]["size"] == 16
    assert record["config"]["poly_decay"] and record["config"]["test_images"] == 32
    (eager, jax) = record["outcomes"]
    assert {eager["weighting"], jax["weighting"]} == {"border weights"}
    assert jax["losses"][0] == pytest.approx(eager["losses"][0], rel=1e-5)
    assert [step for step, _, _ in eager["dice_curve"]] == [3]  # the last step is always evaluated
    report = (run / "report.md").read_text()
    assert (
        report.startswith("# Learning to separate touching cells in volumes")
        and "seconds to Dice 0.9" in report
    )


def test_runs_that_share_a_results_folder_get_their_own(tmp_path) -> None:
    for _ in range(2):
        assert train_cells.main([*TINY, "--results-dir", str(tmp_path)]) in (0, 1)
    first, second = sorted(tmp_path.iterdir(), key=lambda p: len(p.name))
    assert second.name == first.name + "-2"
    for run in (first, second):
        assert {p.name for p in run.iterdir()} == {"report.md", "outcomes.json", "loss-curves.png"}
