"""Every worked example of the seeds, replayed through the library, is also a test."""

import pytest

from experiments import worked_examples


@pytest.mark.parametrize("name", sorted(worked_examples.EXAMPLES))
def test_worked_example(name):
    c = worked_examples.Checker(verbose=False)
    worked_examples.EXAMPLES[name](c)
    assert c.count > 5
    assert not c.failures, c.failures


def test_a_wrong_value_is_reported():
    c = worked_examples.Checker(verbose=False)
    c.expect("x", [1.0, 2.0], [1.0, 2.5])
    assert c.failures == ["x"]


def test_main_exit_status(capsys):
    assert worked_examples.main(["004"]) == 0
    assert "seed 004: 9 values checked, ok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # an unknown id is a usage error, as argparse reports it
        worked_examples.main(["999"])
    assert exit_.value.code == 2
