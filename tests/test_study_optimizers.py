"""studies.optimizers' config: values it cannot compute with are refused before anything runs.

The quick run itself is tested in test_studies.py (slow); these only parse.
"""

import pytest

from sandbox import landscapes
from studies import optimizers


@pytest.mark.parametrize(
    "argv, message",
    [
        # Landscapes without a minimum have no success to measure.
        (["--functions", "saddle"], "`--functions` must be one of ackley, "),
        (["--functions", "himmelblau,monkey_saddle"], "got 'monkey_saddle'"),
        (["--picture-function", "saddle"], "`--picture-function` must be one of ackley, "),
        # The rows of the lr x beta heatmaps.
        (["--betas", "0.5,0.5"], "`--betas` must be a non-empty list, increasing"),
        (["--betas", "0.9,0.5,0.8"], "`--betas` must be a non-empty list, increasing"),
        (["--functions", "beale,beale"], "`--functions` must be a non-empty list, distinct"),
        (["--optimizers", "sgd,sgd"], "`--optimizers` must be a non-empty list, distinct"),
        # A picture path counts only inside the box: from outside none would.
        (["--picture-start", "5,5"], "`--picture-function`, `--picture-start`: must satisfy"),
    ],
)
def test_values_it_cannot_compute_with_exit_2_in_one_line_naming_the_flag(
    argv, message, tmp_path, capsys
):
    with pytest.raises(SystemExit) as e:
        optimizers.main(["--quick", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_the_choices_are_the_two_d_landscapes_with_a_minimum():
    # (which those are is tested in test_landscapes)
    assert optimizers.Landscape2D.__args__ == tuple(landscapes.names_2d_with_minimum())
    assert {"saddle", "monkey_saddle", "x2sinx"}.isdisjoint(optimizers.Landscape2D.__args__)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--quick"],
        ["--functions", "beale", "booth"],  # the README's override
        ["--quick", "--betas", "0.9"],
        ["--quick", "--picture-function", "himmelblau", "--picture-start", "5,5"],
    ],
)
def test_the_presets_the_readme_override_and_good_values_parse(argv):
    optimizers.main.parse(argv)
