"""studies.gradient's config: values it cannot compute with are refused before anything runs."""

import pytest

from studies import gradient


@pytest.mark.parametrize(
    "argv, flag",
    [
        # On a 2 x 2 grid z = y^2 - x^2 is 0 at all four corners: no contour lines.
        (["--contour-n", "2"], "--contour-n"),
        # z overflows float32 (no contour lines either), and the uphill step is lost.
        (["--half-width", "1e30"], "--half-width"),
        (["--half-width", "1e5"], "--half-width"),
        # No grid point with |grad| > MOVING: the uphill fraction would be a mean of nothing.
        (["--half-width", "1e-3"], "--half-width"),
        # A step past MOVING goes downhill near the origin.
        (["--step", "0.01"], "--step"),
        # A step below float32's resolution of z: its rise rounds to 0.
        (["--half-width", "1000", "--step", "1e-6"], "--half-width`, `--step"),
    ],
)
def test_values_it_cannot_compute_with_are_refused_in_one_line(argv, flag):
    with pytest.raises(ValueError, match=f"`{flag}`") as e:
        gradient.main.parse(["--quick", *argv])
    assert "\n" not in str(e.value)


def test_a_refused_value_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gradient.main(["--quick", "--out", str(tmp_path / "run"), "--contour-n", "2"])
    err = capsys.readouterr().err.strip()
    assert (
        e.value.code == 2 and err == "error: `--contour-n` must be an integer in [3, 8192], got 2"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [[], ["--quick"], ["--grid-n", "2048"], ["--contour-n", "3", "--half-width", "4000"]],
)
def test_the_presets_the_readme_override_and_the_limits_parse(argv):
    gradient.main.parse(argv)
