"""Profiling: a jax.profiler trace window over chosen training steps, and a per-op time
breakdown of a compiled step from such a trace (XLA:CPU names each executed op).

The breakdown reads the Perfetto JSON that `jax.profiler.trace(create_perfetto_trace=True)`
writes and the compiled HLO, and groups op time into categories: matrix multiplications,
convolutions, reductions and the rest (elementwise fusions, copies, pads).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

import jax

CATEGORIES = ("matmul", "convolution", "reduction", "elementwise", "other")


class TraceWindow:
    """Starts a jax.profiler trace before step `start` and stops it after `start + steps - 1`
    (0-based step indices, as the training loop counts); `steps` = 0 never traces."""

    def __init__(self, log_dir: str | Path, start: int, steps: int):
        self.log_dir, self.start, self.stop = str(log_dir), start, start + steps
        self.active = False

    def before_step(self, step: int) -> None:
        """Call with the index of the step about to run."""
        if self.stop > self.start and step == self.start and not self.active:
            jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Call after dispatching step `step`; waits for its outputs when the window closes."""
        if self.active and step + 1 >= self.stop:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        """Stops the trace if it is running (also when training ends inside the window)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _computations(hlo_text: str) -> dict[str, str]:
    bodies, name, lines = {}, None, []
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$", line)
        if header:
            name, lines = header.group(1), []
            bodies[name] = lines
        elif name is not None:
            lines.append(line)
    return {k: "\n".join(v) for k, v in bodies.items()}


def op_categories(hlo_text: str) -> dict[str, str]:
    """Maps each instruction name of a compiled HLO module to a category (CATEGORIES), looking
    inside fusions at what they compute."""
    bodies = _computations(hlo_text)
    categories = {}
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^=]*?\b([\w\-]+)\(")
    for body in bodies.values():
        for line in body.splitlines():
            m = instruction.match(line)
            if not m:
                continue
            name, opcode = m.groups()
            called = re.search(r"calls=%?([\w.\-]+)", line)
            text = bodies.get(called.group(1), "") if called else line
            if " dot(" in text or opcode == "dot":
                categories[name] = "matmul"
            elif " convolution(" in text or opcode == "convolution":
                categories[name] = "convolution"
            elif re.search(r" reduce(-window)?\(", text) or opcode.startswith("reduce"):
                categories[name] = "reduction"
            elif opcode in ("fusion", "add", "multiply", "select", "pad", "copy", "transpose"):
                categories[name] = "elementwise"
            else:
                categories[name] = "other"
    return categories


def _perfetto_events(trace_dir: str | Path) -> list[dict]:
    files = sorted(
        Path(trace_dir).glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime
    )
    if not files:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def op_breakdown(trace_dir: str | Path, hlo_text: str, top: int = 15) -> dict:
    """Time per category and the `top` op groups (name without its .N suffix) of the XLA ops in
    a trace, in milliseconds summed over all traced executions and threads."""
    categories = op_categories(hlo_text)
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text)
    module = module.group(1) if module else None
    per_category: collections.Counter = collections.Counter()
    per_group: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event in _perfetto_events(trace_dir):
        name = event.get("name", "")
        if event.get("ph") != "X" or name not in categories:
            continue
        if module and event.get("args", {}).get("hlo_module", module) != module:
            continue  # another compiled function that ran inside the trace
        ms = event.get("dur", 0) / 1e3
        group = (re.sub(r"\.\d+$", "", name), categories[name])
        per_category[categories[name]] += ms
        per_group[group] += ms
        counts[group] += 1
    total = sum(per_category.values())
    return {
        "total_op_ms": round(total, 1),
        "categories": {
            c: {"ms": round(per_category[c], 1), "share": round(per_category[c] / total, 3)}
            for c in CATEGORIES
            if per_category[c] and total
        },
        "top_ops": [
            {"op": g[0], "category": g[1], "calls": counts[g], "ms": round(ms, 1)}
            for g, ms in per_group.most_common(top)
        ],
    }


def xla_memory(compiled) -> dict:
    """The compiled step's buffers per device from XLA's memory analysis (bytes)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    out["xla_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    peak = getattr(m, "peak_memory_in_bytes", 0)
    out["xla_peak_bytes"] = int(peak) if peak else None
    return out
