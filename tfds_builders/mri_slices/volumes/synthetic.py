"""Small synthetic 3D cohorts in the three volume layouts, with atrophy graded by stage: for the
tests and the volumes demo, so that every volume layout runs without a download.

Each session is a phantom head in RAS voxels at 1 mm (`render`): an ellipsoid head with a scalp
and skull ring, a brain with a grey-matter rim and a white-matter core, two lateral ventricles
beside the midline that ENLARGE with the atrophy grade, two hippocampus-like blobs in CSF pockets
that SHRINK, and a cortical rim that thins; each subject has its own head size, position (a few
voxels), intensity gain, smooth bias field, noise and baseline ventricle and hippocampus sizes.
A subject's grade is its class's (CN 0, MCI 1, AD 2; CDR 0 / 0.5 / 1 / 2 -> 0 / 1 / 2 / 3) plus
jitter, so that neighbouring classes overlap. The anatomy is then written in each layout's form:

- `caps`: out_dir is the CAPS folder: `subjects/sub-SYN<nnn>/ses-M000/t1_linear/sub-SYN<nnn>_
  ses-M000_T1w_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz` (float32, ~0..1.2, RAS
  affine, head with skull as Clinica's t1-linear leaves it), ses-M012 for a share of subjects
  (one of them CN at M000 and MCI at M012), and `labels.tsv` (participant_id, session_id,
  diagnosis, age, sex) beside `subjects/`. Diagnoses CN/MCI/AD about 40/30/30%.
- `oasis1`: `disc1/`, `disc2/` of `OAS1_<xxxx>_MR1/PROCESSED/MPRAGE/T88_111/` Analyze int16
  pairs (4D, trailing singleton axis, as the release) `..._t88_masked_gfc` (brain only) and
  `..._t88_gfc` (with the skull), stored with x flipped as Analyze implies (nibabel reads them
  back as the RAS anatomy), intensities ~0..1200, heads a little larger; two or three `_MR2`
  repeats; `oasis_cross-sectional.csv` with the release's header, CDR distributed as OASIS-1's,
  about 20% blank-CDR young controls, and the repeats' CDR and MMSE blank as the release has them.
- `nifti`: volumes in mixed forms and affines (RAS .nii.gz, LPS .nii, permuted axes .nii.gz,
  one Analyze .hdr/.img pair), some in sub-folders, each storing the same RAS anatomy; and
  `labels.csv` (path, subject, session, label spelled CN/MCI/AD).

Deterministic by seed; a 48-subject cohort takes a few seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

LAYOUTS = ("caps", "oasis1", "nifti")
# Bump when the files a seed produces change, so that stale generated cohorts are not reused.
GENERATOR_VERSION = 1
DIAGNOSES = ("CN", "MCI", "AD")
GRADE_OF_DIAGNOSIS = {"CN": 0.0, "MCI": 1.0, "AD": 2.0}
CDRS = (0.0, 0.5, 1.0, 2.0)
GRADE_OF_CDR = {0.0: 0.0, 0.5: 1.0, 1.0: 2.0, 2.0: 3.0}
CAPS_SUFFIX = "_T1w_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
OASIS_HEADER = ("ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF",
                "Delay")  # fmt: skip
# The forms a nifti cohort's volumes take, in turn (the Analyze pair once).
NIFTI_FORMS = ("ras", "lps", "permuted")
# Tissue intensities of the phantom (T1: white matter brightest, CSF darkest).
WM, GM, CSF, SKULL = 1.0, 0.65, 0.12, 1.1


@dataclasses.dataclass(frozen=True)
class VolumeCohortSpec:
    """Size, class balance and difficulty of a synthetic volume cohort."""

    subjects: int = 48
    shape: tuple[int, int, int] = (40, 48, 40)  # RAS voxels at 1 mm
    second_session_share: float = 0.25  # caps, nifti: subjects with a second session
    diagnosis_shares: tuple[float, float, float] = (0.4, 0.3, 0.3)  # CN, MCI, AD
    cdr_shares: tuple[float, float, float, float] = (0.50, 0.28, 0.17, 0.05)  # of CDR'd subjects
    blank_cdr_share: float = 0.2  # oasis1: young controls without a CDR
    repeats: int = 3  # oasis1: _MR2 reliability repeats
    grade_jitter: float = 0.6  # sd of a subject's grade around its class's
    anatomy_spread: float = 0.25  # sd of a subject's baseline ventricle and hippocampus size
    noise: float = 0.03  # of the white-matter intensity


def tag(spec: VolumeCohortSpec, seed: int, layout: str) -> str:
    """A short name for the cohort a (spec, seed, layout, generator version) produces."""
    payload = json.dumps([GENERATOR_VERSION, seed, layout, dataclasses.asdict(spec)])
    return f"{layout}_seed{seed}_{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def subject_anatomy(rng: np.random.Generator, spec: VolumeCohortSpec, scale: float = 1.0) -> dict:
    """One subject's own anatomy and acquisition: head size, position, gain, bias field,
    baseline ventricle and hippocampus sizes and a noise seed."""
    return {
        "size": scale * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        "offset": rng.integers(-2, 3, size=3),
        "gain": float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2)),
        "bias": rng.normal(0.0, 0.08, size=4),
        "ventricles": float(np.clip(rng.normal(1.0, spec.anatomy_spread), 0.5, 1.6)),
        "hippocampi": float(np.clip(rng.normal(1.0, spec.anatomy_spread * 0.5), 0.7, 1.3)),
        "noise_seed": int(rng.integers(2**31)),
    }


def render(
    shape: tuple[int, int, int], grade: float, anatomy: dict, noise: float = 0.03,
    skull: bool = True,
) -> np.ndarray:  # fmt: skip
    """The phantom in RAS voxels (float32, background 0, white matter ~1): atrophy `grade`
    (0 none .. 3 strong) enlarges the ventricles, shrinks the hippocampi and thins the cortex;
    `skull` adds the scalp and skull ring (a masked image has none)."""
    g = float(np.clip(grade, -0.5, 3.5))
    half = np.asarray(shape, dtype=np.float32) / 2
    centre = (np.asarray(shape) - 1) / 2 + anatomy["offset"]
    x, y, z = (np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre, strict=True))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    s = anatomy["size"]

    def inside(cx, cy, cz, rx, ry, rz):
        """Squared ellipsoid radius ((x/rx)^2 + ...) around a centre, in half-extent units."""
        return (((x - cx * half[0]) / (rx * half[0])) ** 2 + ((y - cy * half[1]) / (ry * half[1]))
                ** 2 + ((z - cz * half[2]) / (rz * half[2])) ** 2)  # fmt: skip

    volume = np.zeros(shape, dtype=np.float32)
    brain_r = np.array([0.74, 0.78, 0.70]) * s * (1 - 0.02 * g)
    if skull:
        head = inside(0, 0, 0, *(np.array([0.9, 0.93, 0.86]) * s)) <= 1
        volume[head] = SKULL
        volume[inside(0, 0, 0, *(brain_r * 1.1)) <= 1] = CSF
    brain = inside(0, 0, 0, *brain_r)
    volume[brain <= 1] = GM
    rim = 0.24 * (1 - 0.15 * g)
    volume[brain <= (1 - rim) ** 2] = WM
    for side in (-1, 1):
        pocket = np.array([0.15, 0.28, 0.13]) * s
        volume[inside(side * 0.42 * s, -0.15 * s, -0.28 * s, *pocket) <= 1] = CSF
        hippocampus = pocket * 0.85 * anatomy["hippocampi"] * (1 - 0.12 * g)
        volume[inside(side * 0.42 * s, -0.15 * s, -0.28 * s, *hippocampus) <= 1] = GM
        ventricle = np.array([0.08, 0.34, 0.12]) * s * anatomy["ventricles"] * (1 + 0.22 * g)
        volume[inside(side * 0.13 * s, 0.05 * s, 0.14 * s, *ventricle) <= 1] = CSF
    a, b, c, d = anatomy["bias"]
    bias = 1 + a * x / half[0] + b * y / half[1] + c * z / half[2] + d * (x / half[0]) ** 2
    rng = np.random.default_rng(anatomy["noise_seed"])
    noisy = volume * anatomy["gain"] * bias + rng.standard_normal(shape, dtype=np.float32) * noise
    return np.where(volume > 0, np.maximum(noisy, 0), 0).astype(np.float32)


def _centred(shape: tuple[int, ...]) -> np.ndarray:
    """The RAS affine of an array whose voxel (i, j, k) is x, y, z mm from the middle."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape[:3]) - 1) / 2
    return affine


def stored_form(ras: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) storing the RAS anatomy in a form: `ras`, `lps` (x and y flipped),
    `permuted` (axes stored z, x, y) or `analyze` (x flipped, a trailing singleton axis: the
    orientation nibabel gives an Analyze image); reoriented to the closest canonical one, each
    gives the RAS array back."""
    affine = _centred(ras.shape)
    if form == "ras":
        return ras, affine
    if form == "lps":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.asarray(ras.shape[:2]) - 1
        return np.ascontiguousarray(ras[::-1, ::-1, :]), affine @ flip
    if form == "permuted":
        # Stored voxel (a, b, c) is RAS voxel (b, c, a).
        permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
        return np.ascontiguousarray(ras.transpose(2, 0, 1)), affine @ permute
    if form == "analyze":
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = ras.shape[0] - 1
        return np.ascontiguousarray(ras[::-1, :, :, None]), affine @ flip
    raise ValueError(f"form {form!r}; expected ras, lps, permuted or analyze")


def write_volume(path: Path, ras: np.ndarray, form: str, dtype=np.float32, scale=1.0) -> None:
    """Writes the RAS anatomy to `path` (.nii, .nii.gz, or an Analyze .hdr with its .img) in
    `form` (`stored_form`), scaled and cast to dtype."""
    data, affine = stored_form(ras, form)
    data = np.rint(data * scale).astype(dtype) if np.dtype(dtype).kind == "i" else (
        (data * scale).astype(dtype))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".hdr"):
        image = nib.AnalyzeImage(data, affine)
    else:
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
    image.set_data_dtype(dtype)
    nib.save(image, str(path))


def _counts(shares, n: int) -> list[int]:
    """Per-class counts of n in proportion to the shares, each at least 1 where n allows it,
    the remainder to the first class."""
    counts = np.floor(np.asarray(shares) / sum(shares) * n).astype(int)
    counts = np.maximum(counts, 1 if n >= len(shares) else 0)
    counts[0] += n - counts.sum()
    return [int(c) for c in counts]


def _diagnoses(rng: np.random.Generator, spec: VolumeCohortSpec) -> list[str]:
    """Each subject's diagnosis (CN, MCI, AD in proportion to the spec's shares), shuffled."""
    found = [d for d, n in zip(DIAGNOSES, _counts(spec.diagnosis_shares, spec.subjects),
                               strict=True) for _ in range(n)]  # fmt: skip
    rng.shuffle(found)
    return found


def _second_sessions(rng: np.random.Generator, diagnoses: list[str], share: float) -> list[int]:
    """The subjects (indices) with a second session; the first is a CN subject (the one whose
    diagnosis changes to MCI), where there is one."""
    n = len(diagnoses)
    chosen = sorted(int(i) for i in rng.choice(n, size=min(n, round(share * n)), replace=False))
    cn = [i for i in chosen if diagnoses[i] == "CN"]
    if not cn and "CN" in diagnoses and chosen:
        chosen[0] = diagnoses.index("CN")
        chosen.sort()
        cn = [diagnoses.index("CN")]
    return sorted(chosen, key=lambda i: (i != (cn[0] if cn else -1), i))


def _sessions(rng: np.random.Generator, spec: VolumeCohortSpec):
    """(subject index, session index, diagnosis, grade, anatomy) of every session of a caps or
    nifti cohort: one subject CN at its first session is MCI at its second."""
    diagnoses = _diagnoses(rng, spec)
    anatomies = [subject_anatomy(rng, spec) for _ in diagnoses]
    grades = [GRADE_OF_DIAGNOSIS[d] + rng.normal(0, spec.grade_jitter) for d in diagnoses]
    second = _second_sessions(rng, diagnoses, spec.second_session_share)
    out = [(i, 0, d, grades[i], anatomies[i]) for i, d in enumerate(diagnoses)]
    for rank, i in enumerate(second):
        converts = rank == 0 and diagnoses[i] == "CN"
        later = dict(anatomies[i], noise_seed=anatomies[i]["noise_seed"] + 1)
        out.append((i, 1, "MCI" if converts else diagnoses[i],
                    grades[i] + (0.7 if converts else 0.1), later))  # fmt: skip
    return sorted(out, key=lambda s: (s[0], s[1]))


def _write_table(path: Path, header, rows, delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _caps(root: Path, spec: VolumeCohortSpec, rng: np.random.Generator) -> dict:
    rows, ages, summary = [], {}, {"classes": {}, "files": 0}
    for i, session, diagnosis, grade, anatomy in _sessions(rng, spec):
        sub, ses = f"sub-SYN{i + 1:03d}", ("ses-M000", "ses-M012")[session]
        volume = render(spec.shape, grade, anatomy, spec.noise, skull=True)
        folder = root / "subjects" / sub / ses / "t1_linear"
        write_volume(folder / f"{sub}_{ses}{CAPS_SUFFIX}", volume, "ras")
        age = ages.setdefault(i, round(float(rng.normal(68 + 3 * grade, 6)), 1))
        rows.append((sub, ses, diagnosis, round(age + session, 1), "MF"[i % 2]))
        summary["classes"][diagnosis] = summary["classes"].get(diagnosis, 0) + 1
        summary["files"] += 1
    _write_table(root / "labels.tsv", ("participant_id", "session_id", "diagnosis", "age", "sex"),
                 rows, "\t")  # fmt: skip
    return {**summary, "subjects": len(ages), "sessions": len(rows)}


def _nifti(root: Path, spec: VolumeCohortSpec, rng: np.random.Generator) -> dict:
    rows, subjects, summary = [], set(), {"classes": {}, "files": 0}
    for k, (i, session, diagnosis, grade, anatomy) in enumerate(_sessions(rng, spec)):
        subject, name = f"P{i + 1:03d}", f"P{i + 1:03d}_S{session + 1}"
        form = "analyze" if k == 1 else NIFTI_FORMS[k % len(NIFTI_FORMS)]
        suffix = {"ras": ".nii.gz", "lps": ".nii", "permuted": ".nii.gz", "analyze": ".hdr"}[form]
        relative = f"scans/site{i % 2 + 1}/{name}{suffix}" if i % 3 == 2 else f"{name}{suffix}"
        volume = render(spec.shape, grade, anatomy, spec.noise, skull=True)
        if form == "analyze":
            write_volume(root / relative, volume, form, np.int16, 1000.0)
        else:
            write_volume(root / relative, volume, form)
        rows.append((relative, subject, f"S{session + 1}", diagnosis))
        subjects.add(subject)
        summary["classes"][diagnosis] = summary["classes"].get(diagnosis, 0) + 1
        summary["files"] += 2 if form == "analyze" else 1
    _write_table(root / "labels.csv", ("path", "subject", "session", "label"), rows)
    return {**summary, "subjects": len(subjects), "sessions": len(rows)}


def _oasis_row(sid: str, cdr: float | None, anatomy: dict, grade: float, rng) -> list:
    """A row of oasis_cross-sectional.csv for a first session (blank CDR: a young control)."""
    etiv = int(1450 * anatomy["size"] ** 3 + rng.normal(0, 60))
    nwbv = round(0.80 - 0.025 * max(grade, 0) + float(rng.normal(0, 0.01)), 3)
    sex, hand = ("M", "F")[int(rng.integers(2))], "R"
    if cdr is None:
        return [sid, sex, hand, int(rng.integers(18, 60)), "", "", "", "", etiv, nwbv,
                round(1755 / etiv, 3), ""]  # fmt: skip
    mmse = int(np.clip(round(29 - 4 * GRADE_OF_CDR[cdr] + rng.normal(0, 1.5)), 0, 30))
    return [sid, sex, hand, int(np.clip(rng.normal(72 + 4 * cdr, 7), 60, 96)),
            int(rng.integers(1, 6)), int(rng.integers(1, 6)), mmse, f"{cdr:g}", etiv, nwbv,
            round(1755 / etiv, 3), ""]  # fmt: skip


def _oasis1(root: Path, spec: VolumeCohortSpec, rng: np.random.Generator) -> dict:
    n_blank = round(spec.blank_cdr_share * spec.subjects)
    counts = _counts(spec.cdr_shares, spec.subjects - n_blank)
    cdrs = [None] * n_blank + [c for c, n in zip(CDRS, counts, strict=True) for _ in range(n)]
    rng.shuffle(cdrs)
    rated = [i for i, c in enumerate(cdrs) if c is not None]
    repeats = sorted(int(i) for i in rng.choice(rated, min(spec.repeats, len(rated)), False))
    # Slightly larger heads and another field of view than the CAPS cohort, as T88_111 has.
    shape = (spec.shape[0] + 2, spec.shape[1], spec.shape[2] - 2)
    rows, extra, summary = [], [], {"classes": {}, "files": 0, "sessions": 0}
    for i, cdr in enumerate(cdrs):
        anatomy = subject_anatomy(rng, spec, scale=1.05)
        grade = (0.0 if cdr is None else GRADE_OF_CDR[cdr]) + rng.normal(0, spec.grade_jitter)
        subject = f"OAS1_{i + 1:04d}"
        row = _oasis_row(f"{subject}_MR1", cdr, anatomy, grade, rng)
        rows.append(row)
        for k in (1, 2) if i in repeats else (1,):
            sid = f"{subject}_MR{k}"
            disc = root / f"disc{1 + 2 * i // spec.subjects}"
            folder = disc / sid / "PROCESSED" / "MPRAGE" / "T88_111"
            session = dict(anatomy, noise_seed=anatomy["noise_seed"] + k)
            for skull, kind in ((False, "masked_gfc"), (True, "gfc")):
                volume = render(shape, grade, session, spec.noise, skull=skull)
                name = f"{sid}_mpr_n4_anon_111_t88_{kind}.hdr"
                write_volume(folder / name, volume, "analyze", np.int16, 900.0)
                summary["files"] += 2
            summary["sessions"] += 1
            label = "blank" if cdr is None else f"CDR {cdr:g}"
            summary["classes"][label] = summary["classes"].get(label, 0) + 1
            if k == 2:  # the release leaves a repeat's Educ, SES, MMSE and CDR blank
                extra.append([sid, *row[1:4], "", "", "", "", *row[8:11],
                              int(rng.integers(1, 90))])  # fmt: skip
    _write_table(root / "oasis_cross-sectional.csv", OASIS_HEADER, rows + extra)
    return {**summary, "subjects": len(cdrs)}


_WRITERS = {"caps": _caps, "oasis1": _oasis1, "nifti": _nifti}


def generate(
    out_dir: str | os.PathLike, seed: int = 0, layout: str = "caps",
    spec: VolumeCohortSpec = VolumeCohortSpec(),
) -> dict:  # fmt: skip
    """Writes a synthetic cohort in `layout` (LAYOUTS) under out_dir (caps: out_dir is the CAPS
    folder); returns what it wrote: sessions per class (caps, nifti: diagnosis; oasis1: CDR or
    "blank"), subjects, sessions and volume files (an Analyze pair counts two)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31 + LAYOUTS.index(layout)])
    summary = _WRITERS[layout](root, spec, rng)
    return {"layout": layout, **summary, "classes": dict(sorted(summary["classes"].items()))}
