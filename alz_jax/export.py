"""Command: inference weights out of a training run, with everything needed to use them.

    python -m alz_jax.export --workdir=DIR [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa] --format=safetensors|npz|orbax [--dtype=bfloat16] \
        [--output=DIR] [--platforms=cpu,cuda,tpu]

Writes to --output (default WORKDIR/export/step<N>_<weights>_<dtype>_<format>/) the weights,
the inference function serialized with `jax.export` and metadata.json; what each holds, and
`load`/`load_inference` to read an export back: alz_jax/run/exporting.py.
"""

from absl import app, flags

from alz_jax.host import command
from alz_jax.host.errors import UserError
from alz_jax.run import exporting

_WORKDIR = command.define_workdir("Workdir of a training run.", required=False)
_CHECKPOINT = command.define_checkpoint()
_WEIGHTS = command.define_weights()
_FORMAT = flags.DEFINE_enum("format", None, list(exporting.FORMATS), "Weight file format.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", list(exporting.DTYPES), "Stored weights and compute dtype."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default WORKDIR/export/...).")
_PLATFORMS = flags.DEFINE_list(
    "platforms", ["cpu", "cuda", "tpu"], "Platforms the serialized function is lowered for."
)


def main(argv: list[str]) -> None:
    """Exports and prints the output folder."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _FORMAT.value:
        raise UserError("--workdir and --format are required.")
    out = exporting.export(
        _WORKDIR.value, _FORMAT.value, _CHECKPOINT.value, _WEIGHTS.value, _DTYPE.value,
        _OUTPUT.value, tuple(_PLATFORMS.value),
    )  # fmt: skip
    print(f"Exported to {out}")


if __name__ == "__main__":
    command.run(main)
