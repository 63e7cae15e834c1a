"""What the CLI tests share: the arguments of a seconds-long training run and the one-line error check."""

from hope.cli import main

TINY = ["--recipe", "debug", "--no-progress", "--set", "model.d_model=32", "train.steps=4", "train.eval_every=4",
        "train.ckpt_every=4", "train.eval_tokens=1024", "train.sample_tokens=0"]


def error_of(capsys, argv):
    """Run the CLI, expect exit code 2 and exactly one `error: ...` line on stderr; return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
