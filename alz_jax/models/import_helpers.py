"""What every family's PyTorch-weight import shares: reading weight files, the error type, the
finite check, tensor layout moves, and a reader that fills a model's parameter tree from a state
dict by key, refusing missing and unused tensors by name. (The dispatch to each family's
importer is weights_import.py.)

Files are read without unpickling arbitrary objects: safetensors (`.safetensors`), NumPy
archives (`.npz`, no pickle) or PyTorch files (`.pth`, `.pt`, `.bin`) through
`torch.load(..., weights_only=True)` when torch is installed.

Layouts: convolutions [O, I/g, kh, kw] -> [kh, kw, I/g, O]; linears [out, in] -> [in, out];
vectors as they are. A 3-channel stem becomes a 1-channel one by summing its kernel over the
input channels (a grayscale image repeated over RGB gives the same activations), and one of
in_chans > 3 channels (or 2: 2.5D input, a slice with its neighbours) by timm's
adapt_input_conv rule (`adapt_input_kernel`); a 3-channel model keeps it as it is. A classifier
whose class count differs is re-initialised as a fresh model's would be; a spatial attention
pooling (model.spatial_attention), which no file has, keeps its fresh initialisation.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file  # (its bytes reader has no bfloat16)

from alz_jax.host import storage
from alz_jax.host.errors import UserError


class ConversionError(UserError):
    """A state dict that doesn't fit the requested model; the message names the keys."""


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")
# Keys under which training scripts nest the model's state dict (FB: "model"; others).
_NESTING_KEYS = ("model", "state_dict", "model_state_dict")


def _torch_to_numpy(value) -> np.ndarray:
    # bfloat16/float16 tensors go through float32: numpy has no bfloat16 of torch's.
    if value.is_floating_point():
        value = value.float()
    return value.detach().cpu().numpy()


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Name -> array of a weight file (local or any etils path, e.g. gs://), without unpickling
    arbitrary objects; a checkpoint that nests its state dict under 'model' or 'state_dict'
    (FB's release, many training scripts) is unwrapped and a DDP 'module.' prefix removed."""
    file = storage.path(path)
    if not file.exists():
        raise UserError(f"Weight file {path} does not exist.")
    suffix = file.suffix.lower()
    try:
        if suffix == ".safetensors":
            with storage.local_file(file) as name:
                state = load_file(name)
        elif suffix == ".npz":
            with np.load(io.BytesIO(file.read_bytes()), allow_pickle=False) as archive:
                state = {k: archive[k] for k in archive.files}
        elif suffix in TORCH_SUFFIXES:
            state = _load_torch(file.read_bytes(), path)
        else:
            raise UserError(
                f"Weight file {path}: unknown type {suffix!r}; expected .safetensors, .npz or a "
                f"PyTorch file ({', '.join(TORCH_SUFFIXES)})."
            )
    except UserError:
        raise
    except Exception as e:  # a truncated or corrupt file: name it, say what it was read as
        raise UserError(f"Could not read weight file {path} as {suffix}: {e}") from e
    for key in _NESTING_KEYS:
        if key in state and isinstance(state[key], Mapping):
            others = sorted(k for k in state if k != key)
            logging.info("%s: using the state dict under %r%s", path, key,
                         f" (not {others})" if others else "")  # fmt: skip
            state = state[key]
            break
    ignored = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray))
    if ignored:
        logging.info("%s: ignoring %d entries that are not tensors: %s%s", path, len(ignored),
                     ignored[:10], " ..." if len(ignored) > 10 else "")  # fmt: skip
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state:
        raise UserError(f"Weight file {path} holds no tensors.")
    check_finite(state, f"Weight file {path}")
    return state


def _load_torch(data: bytes, path: str) -> dict:
    try:
        import torch  # noqa: PLC0415  (optional: only .pth files need PyTorch)
    except ImportError as e:
        raise UserError(
            f"Reading the PyTorch file {path} needs torch (pip install torch), which alz_jax "
            "does not install. Or convert it once where torch is, to a file read without torch "
            "(for FB's release, take torch.load(...)['model']):\n"
            '  python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() '
            "for k, v in torch.load('IN.pth', weights_only=True).items()}, 'OUT.safetensors')\""
        ) from e
    # weights_only: tensors and plain containers only; a pickled object is refused.
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict.")

    def convert(tree):
        if isinstance(tree, Mapping):
            return {k: convert(v) for k, v in tree.items()}
        return _torch_to_numpy(tree) if isinstance(tree, torch.Tensor) else tree

    return convert(loaded)


def _non_finite_count(value: np.ndarray) -> int:
    """NaN and Inf entries of a floating array (0 for integer and boolean arrays)."""
    if value.dtype.kind in "biu":
        return 0
    try:
        finite = np.isfinite(value)
    except TypeError:  # an extension float type (bfloat16) numpy's isfinite doesn't take
        finite = np.isfinite(value.astype(np.float32))
    return int(finite.size - np.count_nonzero(finite))


def check_finite(state_dict: Mapping[str, np.ndarray], source: str) -> None:
    """Refuses (ConversionError) a state dict with NaN or Inf in any floating tensor, naming
    each such tensor and its count: imported, they would surface only later as a "diverged"
    run blamed on the learning rate. `source` names where the tensors came from."""
    bad = {}
    for key in sorted(state_dict):
        value = np.asarray(state_dict[key])
        count = _non_finite_count(value)
        if count:
            bad[key] = f"{key} ({count} of {value.size} values)"
    if bad:
        raise ConversionError(
            f"{source} holds NaN or Inf in {len(bad)} tensor(s): {listed(bad.values())}. The "
            "checkpoint is damaged or was saved from a diverged run; use another file (or "
            "re-download it)."
        )


def listed(names: Iterable[str], limit: int = 10) -> str:
    """'a, b, c ... and N more'."""
    names = list(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def to_project_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """A PyTorch tensor in the project's layout, by the parameter's leaf name and rank."""
    value = np.asarray(value, np.float32)
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def torch_leaf(leaf: str) -> str:
    """The PyTorch attribute of a project leaf (kernel/scale: weight, mean: running_mean)."""
    return {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }.get(leaf, leaf)


def adapt_input_kernel(kernel: np.ndarray, in_chans: int) -> np.ndarray:
    """A 3-channel stem kernel (kh, kw, 3, O) for `in_chans` input channels, as timm's
    adapt_input_conv: summed over its channels for 1; for more, repeated over the channels
    ceil(in_chans / 3) times, cut to in_chans and scaled by 3 / in_chans (so an input whose
    channels are alike gives the activations of the RGB image of that gray)."""
    kernel = np.asarray(kernel, np.float32)
    if in_chans == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = -(-in_chans // 3)
    tiled = np.tile(kernel, (1, 1, repeats, 1))[:, :, :in_chans]
    return tiled * np.float32(3.0 / in_chans)


def path_names(path) -> tuple:
    """A jax key path as a tuple of plain names and indices."""
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


class StateDictReader:
    """Fills parameter trees from one state dict and, at the end, refuses what is missing or
    left unused (other than keys matching `ignore`, e.g. BatchNorm's num_batches_tracked)."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], source: str, ignore: Iterable = ()):
        check_finite(state_dict, source)
        self.state_dict = state_dict
        self.source = source
        self.ignore = [re.compile(p) for p in ignore]
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """Records an adaptation once."""
        if text not in self.notes:
            self.notes.append(text)

    def take(self, key: str) -> np.ndarray | None:
        """The tensor under `key` (marked used), or None, recorded as missing."""
        if key not in self.state_dict:
            self.missing.append(key)
            return None
        self.used.add(key)
        return np.asarray(self.state_dict[key])

    def variables(
        self,
        model: nnx.Module,
        key_for: Callable[[tuple], str],
        *,
        head: tuple,
        stem: tuple,
        num_classes: int,
        fresh: tuple | None = None,
        head_kind: str = "softmax",
    ) -> tuple[dict, dict]:
        """(params, batch_stats) of a freshly built `model` (a BatchNorm family's), each tree
        filled as `tree` fills it (the stem and classifier adapted in the parameters)."""
        params = self.tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)), key_for, head=head,
                           stem=stem, num_classes=num_classes, fresh=fresh,
                           head_kind=head_kind)  # fmt: skip
        return params, self.tree(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), key_for)

    def tree(
        self,
        template,
        key_for: Callable[[tuple], str],
        *,
        transform: Callable[[tuple, np.ndarray], np.ndarray] | None = None,
        head: tuple | None = None,
        stem: tuple | None = None,
        num_classes: int | None = None,
        fresh: tuple | None = None,
        head_kind: str = "softmax",
    ):
        """`template` (a pure dict of arrays) with each leaf replaced by the tensor at
        `key_for(path)`, moved to the project layout (or by `transform(path, tensor)` where it
        returns an array); the leaves under `head` are kept from the template when the file
        has no classifier or one for another class count; the leaves under `fresh` (the spatial
        attention pooling, which no file has) are kept from the template; the kernel at `stem`
        is adapted (adapt_input_kernel) when the file's has 3 input channels and the model
        another number. An ordinal head (`head_kind` coral or corn, model.head) is always kept
        from the template: a file's classifier is a softmax one, whatever its shape."""
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        out = []
        if head is not None and head_kind != "softmax":
            head_shapes_differ = self._fresh_head(template, key_for, head, head_kind)
        else:
            head_shapes_differ = head is not None and self._head_differs(template, key_for, head)
        for path, init in leaves:
            names = path_names(path)
            expected = tuple(np.shape(init))
            if fresh is not None and names[: len(fresh)] == fresh:
                self.note(f"{'/'.join(fresh)}: spatial attention initialised fresh (not in files)")
                out.append(np.asarray(init, np.float32))
                continue
            under_head = head is not None and names[: len(head)] == head
            if under_head and head_shapes_differ:
                out.append(np.asarray(init, np.float32))
                continue
            key = key_for(names)
            if under_head and key not in self.state_dict:
                self.note(f"head: initialised for {num_classes} classes (the file has none)")
                out.append(np.asarray(init, np.float32))
                continue
            value = self.take(key)
            if value is None:
                out.append(np.asarray(init, np.float32))
                continue
            converted = transform(names, value) if transform else None
            if converted is None:
                converted = to_project_layout(value, names[-1])
            if stem is not None and names == stem and converted.shape != expected:
                converted = self._adapted_stem(converted, expected, key)
            if converted.shape != expected:
                raise ConversionError(
                    f"{key} has shape {tuple(value.shape)}, which becomes {converted.shape} in "
                    f"the project's layout; the model expects {expected} for "
                    f"{'.'.join(map(str, names))}."
                )
            out.append(np.asarray(converted, np.float32))
        return jax.tree_util.tree_unflatten(treedef, out)

    def _fresh_head(self, template, key_for, head: tuple, head_kind: str) -> bool:
        """Marks the file's classifier tensors used (not loaded) and notes the fresh head."""
        keys = [key_for(path_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]
                if path_names(p)[: len(head)] == head]  # fmt: skip
        dropped = [k for k in keys if k in self.state_dict]
        self.used.update(dropped)
        self.note(f"head: initialised fresh for model.head={head_kind} (ordinal outputs)"
                  + (f"; the file's softmax classifier ({', '.join(dropped)}) is not used"
                     if dropped else ""))  # fmt: skip
        return True

    def _head_differs(self, template, key_for, head: tuple) -> bool:
        for path, init in jax.tree_util.tree_flatten_with_path(template)[0]:
            names = path_names(path)
            if names[: len(head)] != head:  # key_for may know only the file's modules
                continue
            key = key_for(names)
            if key in self.state_dict:
                have = to_project_layout(self.state_dict[key], names[-1]).shape
                if have != tuple(np.shape(init)):
                    self.used.update(
                        key_for(path_names(p))
                        for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]
                        if path_names(p)[: len(head)] == head
                    )
                    self.note(
                        f"head: re-initialised for {np.shape(init)[-1]} classes (the "
                        f"checkpoint's has {have[-1]})"
                    )
                    return True
        return False

    def _adapted_stem(self, kernel: np.ndarray, expected: tuple, key: str) -> np.ndarray:
        same_shape = kernel.shape[:2] + kernel.shape[3:] == expected[:2] + expected[3:]
        if kernel.shape[2] != 3 or not same_shape:
            raise ConversionError(
                f"{key}: a {kernel.shape[2]}-channel stem cannot be adapted to "
                f"in_chans={expected[2]} (shape {expected}); only a 3-channel (RGB) stem is "
                "(summed for in_chans=1, else repeated and scaled by 3/in_chans: timm's rule)."
            )
        if expected[2] == 1:
            self.note("stem: summed the 3-channel kernel over its input channels for 1-channel "
                      "input")  # fmt: skip
        else:
            self.note(f"stem: the 3-channel kernel repeated over {expected[2]} input channels, "
                      f"scaled by 3/{expected[2]} (timm's adapt_input_conv)")  # fmt: skip
        return adapt_input_kernel(kernel, expected[2])

    def finish(self, what: str) -> list[str]:
        """Raises ConversionError for missing or unused tensors (naming them); else the notes.
        `what` names the model ('ResNet-50')."""
        if self.missing:
            raise ConversionError(
                f"{self.source} lacks {len(self.missing)} tensor(s) this {what} needs: "
                + listed(self.missing)
            )
        unused = sorted(
            k
            for k in set(self.state_dict) - self.used
            if not any(p.fullmatch(k) for p in self.ignore)
        )
        if unused:
            raise ConversionError(
                f"{self.source} has {len(unused)} tensor(s) this {what} would not use (another "
                f"architecture or layout?): " + listed(unused)
            )
        return list(self.notes)
