"""Inference weights out of a training run, with everything needed to use them: the library of
`python -m alz_jax.export`.

Writes to the output folder (default WORKDIR/export/step<N>_<weights>_<dtype>_<format>/):
- the weights: `model.safetensors`, `model.npz` or `orbax/`, as a flat mapping from names such
  as `stages.0.0.dwconv.kernel` to arrays in the project's NHWC layout (float32 or bfloat16);
- `inference.jax_export`: the inference function serialized with `jax.export` (StableHLO, a
  symbolic batch dimension, lowered for the chosen platforms): (weights, uint8 images
  (B, S, S, 1)) -> float32 logits (B, 2) in class_names order, normalisation included;
- `metadata.json` (also inside the safetensors header and the npz): the input size and
  preprocessing, the normalisation statistics, the class names, and the temperature and decision
  thresholds chosen on validation, with the run, checkpoint step and weights they came from.

`load(DIR)` reads any of the three formats back as (weights, metadata); `load_inference(DIR)`
returns the deserialized function with the weights bound: images -> logits.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from safetensors.numpy import load_file, save

from alz_jax.core import steps
from alz_jax.data import preprocess
from alz_jax.host import storage
from alz_jax.host.errors import UserError
from alz_jax.models import registry, scan
from alz_jax.run import run_record
from alz_jax.run.saved_run import SavedRun
from alz_jax.run.specs import RunSpec

FORMATS = ("safetensors", "npz", "orbax")
DTYPES = ("float32", "bfloat16")
WEIGHT_FILES = {"safetensors": "model.safetensors", "npz": "model.npz", "orbax": "orbax"}
FUNCTION_FILE = "inference.jax_export"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
PREPROCESSING = (
    "Decode to 2-D grayscale uint8 (OpenCV's IMREAD_GRAYSCALE); pad with 0 to a centred "
    "square of the longer side; resize to size x size (OpenCV INTER_AREA when shrinking, else "
    "INTER_LINEAR); shape (size, size, 1) uint8. This is alz_jax.data.preprocess.to_model_input. "
    "The inference function normalises: (x / 255 - mean) / std."
)


# ---- The flat weight layout shared by every format and by the serialized function. ----


def _flat_name(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def flatten(params: dict) -> dict[str, np.ndarray]:
    """A parameter tree as {'stages.0.0.dwconv.kernel': array, ...} (sorted names)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_flat_name(path): leaf for path, leaf in leaves}


def weights_template(spec) -> dict:
    """Shapes of the evaluation weights of `spec`: the parameter tree, with BatchNorm
    {"params", "batch_stats"} (steps.Model.split)."""
    params, stats = jax.eval_shape(lambda: registry.init_variables(spec, 0))
    return {"params": params, "batch_stats": stats} if stats else params


def unflatten(flat: dict, spec) -> dict:
    """The weights of `spec` from flat names; every name must be present, none extra."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(weights_template(spec))
    names = [_flat_name(path) for path, _ in paths]
    missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
    if missing or extra:
        raise UserError(f"Exported weights do not fit the model: missing {missing[:5]}, "
                        f"unexpected {extra[:5]}.")  # fmt: skip
    for name, (_, shape) in zip(names, paths, strict=True):
        if tuple(flat[name].shape) != tuple(shape.shape):
            raise UserError(f"Exported weight {name} has shape {tuple(flat[name].shape)}; the "
                            f"model expects {tuple(shape.shape)}.")  # fmt: skip
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def model_metadata(spec, parameters: int) -> dict:
    """The export metadata's description of the model: its family and spec fields (and the
    family's own keys, e.g. those of exports written before other families)."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items()
              if k not in ("dtype", "depthwise", "param_dtype")}  # fmt: skip
    out = {"architecture": registry.title(spec), "family": registry.family(spec).name,
           "spec": fields}  # fmt: skip
    if isinstance(spec, scan.ScanSpec):  # a scan model: its encoder, and the encoder's family
        fields["encoder"] = model_metadata(spec.encoder, 0)["spec"]
        out["encoder_family"] = registry.family(spec.encoder).name
    out.update(registry.export_fields(spec))
    return {**out, "in_chans": spec.in_chans, "num_classes": spec.num_classes,
            "parameters": parameters}  # fmt: skip


def spec_from_metadata(metadata: dict, depthwise: str = "xla"):
    """The model described by an export's metadata (compute dtype included); an export that
    names no family is the default family's, and one without 'spec' keeps its spec's fields
    at the top level of its model description (both written before other families)."""
    m = metadata["model"]
    fam = registry.family_named(m.get("family"))
    known = {f.name for f in dataclasses.fields(fam.spec_type)}
    fields = m.get("spec") or {k: v for k, v in m.items() if k in known}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if m.get("encoder_family"):
        described = {"family": m["encoder_family"], "spec": fields["encoder"]}
        fields["encoder"] = spec_from_metadata({**metadata, "model": described}, depthwise)
    if "depthwise" in known:
        fields["depthwise"] = depthwise
    return fam.spec_type(**fields, dtype=metadata["compute_dtype"])  # fmt: skip


def inference_function(spec, mean: float, std: float) -> Callable:
    """(flat weights, uint8 images (B, S, S, C)) -> float32 logits (B, classes). On CPU a model's
    depthwise convolutions are the shift-and-add form, elsewhere XLA's grouped convolution (the
    results agree within 1e-5; models/depthwise.py), chosen when the function runs."""
    models = {impl: steps.make_model(_with_depthwise(spec, impl)) for impl in ("shift", "xla")}

    def logits_with(model, flat, images, *bag):
        weights = unflatten(jax.tree.map(lambda w: w.astype(jnp.float32), flat), spec)
        inputs = {"slice_mask": bag[0] > 0} if bag else {}
        normalized = preprocess.normalize(images, mean, std)
        return model.apply(weights, normalized, **inputs).astype(jnp.float32)

    def logits(flat, images, *bag):
        return jax.lax.platform_dependent(
            flat, images, *bag,
            cpu=lambda f, x, *b: logits_with(models["shift"], f, x, *b),
            default=lambda f, x, *b: logits_with(models["xla"], f, x, *b),
        )  # fmt: skip

    return logits


def _with_depthwise(spec, impl: str):
    """`spec` (or a scan model's encoder) with depthwise implementation `impl`, where its family
    has one."""
    if isinstance(spec, scan.ScanSpec):
        return dataclasses.replace(spec, encoder=_with_depthwise(spec.encoder, impl))
    if "depthwise" in {f.name for f in dataclasses.fields(spec)}:
        return dataclasses.replace(spec, depthwise=impl)
    return spec


# ---- Writing and reading the formats. ----


def _npz_safe(array: np.ndarray) -> np.ndarray:
    # npz has no bfloat16: stored as its bits (uint16), restored from the metadata's dtype.
    return array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array


def write_weights(
    out: epath.Path, flat: dict[str, np.ndarray], metadata: dict, fmt: str
) -> epath.Path:
    """Writes the flat weights in `fmt` under `out` (metadata embedded where the format allows);
    returns the path written."""
    path = out / WEIGHT_FILES[fmt]
    text = json.dumps(metadata, sort_keys=True)
    if fmt == "safetensors":
        arrays = {k: np.ascontiguousarray(v) for k, v in flat.items()}
        path.write_bytes(save(arrays, {"alz_jax": text}))
    elif fmt == "npz":
        with path.open("wb") as f:
            np.savez(f, __metadata__=np.array(text), **{k: _npz_safe(v) for k, v in flat.items()})
    elif fmt == "orbax":
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(_absolute(path), flat)
    else:
        raise UserError(f"--format={fmt}: expected one of {'|'.join(FORMATS)}.")
    return path


def _absolute(path: epath.Path) -> epath.Path:
    return path if storage.is_url(path) else epath.Path(os.path.abspath(path))


def load(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(flat weights, metadata) of an export, whichever format it holds."""
    directory = storage.path(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.exists():
        raise UserError(f"{directory} is not an alz_jax export (no {METADATA_FILE}).")
    metadata = json.loads(meta_path.read_text())
    fmt = metadata["weights"]["format"]
    path = directory / WEIGHT_FILES[fmt]
    if fmt == "safetensors":
        with storage.local_file(path) as name:  # (its bytes reader has no bfloat16)
            flat = load_file(name)
    elif fmt == "npz":
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as archive:
            flat = {k: archive[k] for k in archive.files if k != "__metadata__"}
        if metadata["weights"]["dtype"] == "bfloat16":
            flat = {k: v.view(ml_dtypes.bfloat16) for k, v in flat.items()}
    else:
        with ocp.StandardCheckpointer() as checkpointer:
            flat = checkpointer.restore(_absolute(path))
        flat = {k: np.asarray(v) for k, v in flat.items()}
    return flat, metadata


def load_inference(directory: str | os.PathLike) -> Callable[..., np.ndarray]:
    """The export's serialized inference function with its weights bound: uint8 images (B, S,
    S, C), any B -> float32 logits (B, classes); a scan model's takes bags (B, K, S, S, C) and
    their slice mask (B, K) (1: a slice, 0: padding), any B and K."""
    flat, _ = load(directory)
    exported = jax.export.deserialize(
        bytearray((storage.path(directory) / FUNCTION_FILE).read_bytes())
    )
    return lambda images, *bag: np.asarray(exported.call(flat, images, *bag))


# ---- The export. ----


def build_metadata(
    loaded: dict, run: RunSpec, record: dict, fmt: str, dtype: str, platforms: Sequence[str]
) -> dict:
    """Everything a user of the exported weights needs besides the weights."""
    spec = loaded["model"].spec
    cal = loaded["calibration"]
    size = run.pipeline.image_size
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "alz_jax_commit": run_record.git_commit(),
        "source": {
            "workdir": str(loaded["workdir"]),
            "checkpoint_step": loaded["step"],
            "weights": loaded["weights"],
            "data_fingerprint": record["identity"]["data"]["fingerprint"],
            "init_from": run.init_from,
        },
        "model": model_metadata(spec, registry.count_params(spec)),
        "weights": {
            "format": fmt,
            "file": WEIGHT_FILES[fmt],
            "dtype": dtype,
            "layout": "flat names (stages.S.B.dwconv.kernel, ...; with BatchNorm params.* and "
            "batch_stats.*) in NHWC: conv kernels (kh, kw, in/groups, out), linear kernels "
            "(in, out); see alz_jax/models/",
        },
        "compute_dtype": dtype,
        "input": {
            "size": size,
            "shape": [size, size, spec.in_chans],
            "dtype": "uint8",
            "layout": "NHWC",
            "preprocessing": PREPROCESSING,
            "channels": "the slice"
            if spec.in_chans == 1
            else (
                f"2.5D: the slice between its {spec.in_chans // 2} neighbours on either side in "
                "its scan, in slice order (the scan's first or last slice repeated at its ends), "
                "each preprocessed alone"
            ),
        },
        "normalization": {
            "mean": loaded["pixel_stats"]["mean"],
            "std": loaded["pixel_stats"]["std"],
            "formula": "(x / 255 - mean) / std, from the training split's pixels",
        },
        "class_names": list(loaded["class_names"]),
        "output": loaded["task"].export_output_text(),
        "calibration": {
            "temperature": cal["temperature"],
            "temperature_applied": cal.get("temperature_applied", False),
            **{k: cal[k] for k in ("thresholds", "threshold_method") if k in cal},
        },
        "inference_function": {
            "file": FUNCTION_FILE,
            "serialization": f"jax.export (StableHLO), jax {jax.__version__}",
            "platforms": list(platforms),
            "arguments": "(weights as the flat name -> array mapping of the weight file, "
            + (
                "uint8 bags (B, K, size, size, channels) of a scan's slices in slice order and "
                "their int32 slice mask (B, K), 1 for a slice and 0 for padding, with B and K "
                f"symbolic{_longest_bag(spec)})"
                if isinstance(spec, scan.ScanSpec)
                else "uint8 images (B, size, size, channels) with B symbolic)"
            ),
            # K logits, or an ordinal head's K - 1 (metadata "output" says how to read them).
            "returns": f"float32 logits (B, {spec.num_outputs})",
        },
    }


def _longest_bag(spec) -> str:
    """What limits K for a scan model's exported function: a transformer places at most
    max_positions slices (the device clips longer bags, it cannot refuse them)."""
    if getattr(spec, "aggregator", "") != "transformer":
        return ""
    return f"; K at most {spec.max_positions} (the transformer's slice positions)"


def export(
    workdir: str, fmt: str, checkpoint: str = "best", weights: str = "selected",
    dtype: str = "float32", output: str | None = None,
    platforms: tuple[str, ...] = ("cpu", "cuda", "tpu"),
) -> epath.Path:  # fmt: skip
    """Exports a run's checkpoint (weights, serialized inference function, metadata); returns
    the output folder."""
    if fmt not in FORMATS:
        raise UserError(f"--format={fmt}: expected one of {'|'.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: expected one of {'|'.join(DTYPES)}.")
    saved = SavedRun.open(workdir)
    loaded = saved.load_model(checkpoint, weights)
    store = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    flat = {k: np.asarray(v).astype(store) for k, v in flatten(loaded["params"]).items()}
    metadata = build_metadata(loaded, saved.spec, saved.record, fmt, dtype, platforms)
    name = f"step{loaded['step']}_{loaded['weights']}_{dtype}_{fmt}"
    out = storage.path(output) if output else storage.path(workdir) / "export" / name
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose another --output or remove it.")
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, flat, metadata, fmt)

    spec = spec_from_metadata(metadata)
    fn = inference_function(spec, metadata["normalization"]["mean"],
                            metadata["normalization"]["std"])  # fmt: skip
    size, chans = metadata["input"]["size"], spec.in_chans
    if isinstance(spec, scan.ScanSpec):
        batch, slices = jax.export.symbolic_shape("batch, slices")
        inputs = (jax.ShapeDtypeStruct((batch, slices, size, size, chans), jnp.uint8),
                  jax.ShapeDtypeStruct((batch, slices), jnp.int32))  # fmt: skip
    else:
        (batch,) = jax.export.symbolic_shape("batch")
        inputs = (jax.ShapeDtypeStruct((batch, size, size, chans), jnp.uint8),)
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}, *inputs
    )
    (out / FUNCTION_FILE).write_bytes(exported.serialize())
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=1, sort_keys=True))
    logging.info("Exported step %d (%s weights, %s) to %s", loaded["step"], loaded["weights"],
                 dtype, out)  # fmt: skip
    return out
