r"""Command: P(AD) for image files or folders, with a trained run's weights, threshold and
temperature.

    python -m alz_jax.predict --workdir=DIR [--checkpoint=best] [--weights=selected] \
        [--output=predictions.csv|.json] PATH [PATH ...]

Takes JPEG or PNG files of any size, grayscale or colour, and folders (searched recursively);
files named `<scanID>_<slice>.<ext>` are also grouped into scans (alz_jax/run/prediction.py).
An unreadable input is reported by name and the rest go on; the exit status is then 1. So is
an image the data audit would refuse: over its pixel limit (refused from the header, never
decoded) or blank (near-black or a single grey level).
"""

import sys

from absl import flags

from alz_jax.host import command
from alz_jax.host.errors import UserError
from alz_jax.run import prediction

_WORKDIR = command.define_workdir("Workdir of a training run.", required=False)
_CHECKPOINT = command.define_checkpoint()
_WEIGHTS = command.define_weights()
_OUTPUT = flags.DEFINE_string("output", None, "Also write the result to this .csv or .json.")


def main(argv: list[str]) -> None:
    """Prints (and optionally writes) P(AD) per image and per scan; exit status 1 if any input
    was unreadable or refused."""
    paths = argv[1:]
    # Before the model is loaded or any image read: a bad --output would waste all of it.
    output = prediction.check_output(_OUTPUT.value) if _OUTPUT.value else None
    if not _WORKDIR.value:
        raise UserError("--workdir is required (the training run whose weights to use).")
    if not paths:
        raise UserError("Give one or more image files or folders after the flags.")
    result = prediction.run(_WORKDIR.value, paths, _CHECKPOINT.value, _WEIGHTS.value)
    written = prediction.write_output(output, result) if output else []
    print(prediction.format_result(result))
    for path in written:
        print(f"Written: {path}")
    if result["errors"] or result["refused"]:
        sys.exit(1)


if __name__ == "__main__":
    command.run(main)
