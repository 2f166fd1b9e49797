"""`bench summary`: reads the JSON lines of launch/gpu_check.sh, writes summary.md beside them
and prints the figures derived from them (JAX over PyTorch, host cores per device)."""

from __future__ import annotations

import json
from pathlib import Path

from alz_jax.bench.settings import Settings


def _cell(value: object) -> str:
    """A Markdown table cell: one line, pipes escaped, None empty."""
    return "" if value is None else " ".join(str(value).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = [header, ["---"] * len(header), *rows]
    return ["| " + " | ".join(_cell(c) for c in row) + " |" for row in lines]


def _ok(records: list[dict], bench: str) -> list[dict]:
    """The records of benchmark `bench` whose command succeeded."""
    return [r for r in records if r.get("bench") == bench and r.get("status") == "ok"]


def _anchors(records: list[dict]) -> list[dict]:
    """The PyTorch anchor's successful records (torch_reference.py's lines carry `anchor`)."""
    return [r for r in records if r.get("anchor") and r.get("status") == "ok"]


def _anchor_model(anchor: dict) -> str:
    """The model an anchor record timed (records from before --model name a ConvNeXt
    variant only)."""
    return anchor.get("model") or f"convnext_{anchor.get('variant')}"


def derived_figures(records: list[dict]) -> dict:
    """From gpu_check's records: JAX's step over PyTorch's (same model, batch and dtype), and
    how many host cores of augmentation the fastest step (of any model) needs."""
    steps = {(r["model"], r["batch"], r["dtype"]): r for r in _ok(records, "step")}
    ratios = {}
    for anchor in _anchors(records):
        ours = steps.get((_anchor_model(anchor), anchor["batch"], anchor["dtype"]))
        if ours:
            ratios[anchor["check"]] = round(ours["img_per_s"] / anchor["img_per_s"], 3)
    fastest = max((r["img_per_s"] for r in steps.values()), default=None)
    augment_rates = [r["img_per_s"] for r in _ok(records, "augment")]
    per_core = augment_rates[0] if augment_rates else None
    parity = _ok(records, "depthwise")
    return {
        "bench": "summary",
        "failed": [r["check"] for r in records if r.get("status") not in ("ok", "skipped")],
        "depthwise_parity_ok": parity[0]["ok"] if parity else None,
        "jax_over_torch": ratios,
        "fastest_step_img_per_s": fastest,
        "augment_img_per_s_per_core": per_core,
        "augment_cores_needed": round(fastest / per_core, 1) if fastest and per_core else None,
    }


def _summary_head(records: list[dict]) -> list[str]:
    """The devices, what `auto` chose, and every check's status."""
    lines = ["# GPU check", ""]
    for d in _ok(records, "devices"):
        versions = d["versions"]
        lines += [
            f"- Devices: {d['device_count']} x {d['device_kind']} (backend {d['backend']}); "
            f"JAX {versions['jax']}, Flax {versions['flax']}, Python {d['python']}.",
            f"- `model.depthwise=auto` -> `{d['depthwise_auto']}`; `dtype=auto` -> "
            f"`{d['dtype_auto']}`.",
            "- Peak dense TFLOP/s (for MFU): "
            + ", ".join(f"{k} {v or 'unknown'}" for k, v in d["peak_tflop_per_s"].items())
            + ".",
        ]
    rows = [[r["check"], r["status"], r["seconds"], r.get("reason") or r.get("error", "")[-160:]]
            for r in records]  # fmt: skip
    return [*lines, "", *_table(["check", "status", "s", "note"], rows)]


def _summary_measurements(records: list[dict], derived: dict) -> list[str]:
    """Tables of the parity check, the train steps and the anchor; the host cores needed."""
    lines = []
    for p in _ok(records, "depthwise"):
        rows = [[r["shape"], r["dtype"], *r["max_rel_diff"].values(), r["fwd_bwd_ms"]["xla"],
                 r["fwd_bwd_ms"]["shift"]] for r in p["rows"]]  # fmt: skip
        header = ["shape", "dtype", "output", "d input", "d kernel", "xla ms", "shift ms"]
        verdict = "within tolerance" if p["ok"] else "**OUT OF TOLERANCE**"
        lines += ["", f"## Depthwise: shift against xla, {verdict}", "", *_table(header, rows)]
    if steps := _ok(records, "step"):
        rows = [[r["model"], r["batch"], r["res"], r["dtype"], r["depthwise"], r["img_per_s"],
                 round(r["step_s"] * 1e3, 2), r["compile_s"], r["achieved_tflop_per_s"],
                 r["utilisation"]] for r in steps]  # fmt: skip
        header = ["model", "batch", "res", "dtype", "depthwise", "img/s", "step ms", "compile s",
                  "TFLOP/s", "MFU"]  # fmt: skip
        lines += ["", "## Train step (bench step)", "", *_table(header, rows)]
    if anchors := _anchors(records):
        rows = [[r["check"], _anchor_model(r), r["device"],
                 r["batch"], r["dtype"], r["img_per_s"], r["first_step_s"],
                 derived["jax_over_torch"].get(r["check"])] for r in anchors]  # fmt: skip
        header = ["anchor", "model", "device", "batch", "dtype", "img/s", "first step s",
                  "JAX / it"]  # fmt: skip
        lines += ["", "## PyTorch anchor (alz_jax/reference/torch_reference.py, channels-last)",
                  "", *_table(header, rows)]  # fmt: skip
    if derived["augment_cores_needed"]:
        lines += ["", "## Host augmentation", "",
                  f"One core decodes and augments {derived['augment_img_per_s_per_core']} img/s; "
                  f"the fastest step ({derived['fastest_step_img_per_s']} img/s) needs "
                  f"{derived['augment_cores_needed']} such cores."]  # fmt: skip
    return lines


def run(args: Settings) -> dict:
    """Writes summary.md beside `--results` (gpu_check's JSON lines); returns the derived
    figures."""
    path = Path(args.results)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    derived = derived_figures(records)
    markdown = [*_summary_head(records), *_summary_measurements(records, derived)]
    (path.parent / "summary.md").write_text("\n".join(markdown) + "\n")
    return derived
