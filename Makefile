# alz_jax: `make demo` and `make test` work on a fresh machine (Python 3.11, CPU).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv test test-fast lint format demo stages-demo stages-compare stages-figures stages-image-split demo-volumes demo-volumes-figures demo-scan demo-scan-figures demo-figures demo-compare parity-torch parity-torchvision clean

# Creates the virtualenv if missing and installs the pinned requirements (again when they change),
# then the project itself, editable, so its commands and configs work from any folder (the
# virtualenv's own setuptools builds it: nothing is downloaded).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" || { echo "alz_jax needs Python 3.11; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Whole suite on CPU with 8 fake devices per process. First every test that runs one JAX process,
# spread over TEST_WORKERS pytest workers (pytest-xdist, a test file per worker at a time); then,
# alone, the tests of several JAX processes (marker `serial`: their collectives time out when the
# cores are shared). Exit code 5 (no tests collected) fails loudly.
# 3 on this project's 2 cores: a third worker fills the time the others wait on child processes
# and disk (401 s against 444 s for the first phase, measured side by side on 2026-11-30).
# The files go out in tests/conftest.py's order (the ones with the most slow tests first), not
# xdist's (the most tests first, which started the longest single-test files last).
TEST_WORKERS ?= 3
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
PYTEST = $(PY) -m pytest --durations=15
define run_pytest
	@$(PYTEST) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef

test: venv
	$(call run_pytest,$(XDIST) -m "not serial" $(PYTEST_ARGS))
	$(call run_pytest,-m serial $(PYTEST_ARGS))

# The tests that don't train end to end (the serial ones all do): under 3 minutes here.
test-fast: venv
	$(call run_pytest,$(XDIST) -m "not slow" $(PYTEST_ARGS))

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Install (timed), then generate + build the synthetic set, train, evaluate, report, gate. Without
# DEMO_ARGS, the printed summary must also equal docs/demo/summary.txt, the report README.md
# quotes (a diff otherwise); DEMO_EXPECT= turns that off, DEMO_EXPECT=FILE compares with FILE.
DEMO_EXPECT ?= $(if $(DEMO_ARGS),,docs/demo/summary.txt)
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory venv || exit 1; \
	echo "install: $$(( $$(date +%s) - start )) s"; \
	$(PY) -m alz_jax.demo $(if $(DEMO_EXPECT),--expect=$(DEMO_EXPECT)) $(DEMO_ARGS)

# The four-stage demo (configs/stages_demo.py) from scratch on its synthetic set, in .demo/stages.
stages-demo: venv
	rm -rf .demo/stages
	$(PY) -m alz_jax.main --config=configs/stages_demo.py --workdir=.demo/stages $(DEMO_ARGS)

# The stages demo, the same with a CORN ordinal head (configs/stages_corn.py) and its plain-CNN
# baseline (configs/stages_simple_cnn.py) from scratch on the same hard synthetic set, compared on the same test subjects, and the comparison checked
# against the one docs/stages.md quotes (STAGES_EXPECT= to skip the check; CI runs it).
# STAGES_SEED=1: the same on another synthetic set, one the recipe was not tuned on (checked
# against docs/demo/stages/compare_seed1.md).
STAGES_SEED ?= 0
STAGES_EXPECT ?= docs/demo/stages/$(if $(filter 0,$(STAGES_SEED)),compare.md,compare_seed$(STAGES_SEED).md)
stages-compare: venv
	rm -rf .demo/stages .demo/stages_corn .demo/stages_cnn .demo/stages_compare
	$(PY) -m alz_jax.main --config=configs/stages_demo.py --workdir=.demo/stages \
		--config.data.synthetic_seed=$(STAGES_SEED)
	$(PY) -m alz_jax.main --config=configs/stages_corn.py --workdir=.demo/stages_corn \
		--config.data.synthetic_seed=$(STAGES_SEED)
	$(PY) -m alz_jax.main --config=configs/stages_simple_cnn.py --workdir=.demo/stages_cnn \
		--config.data.synthetic_seed=$(STAGES_SEED)
	$(PY) -m alz_jax.compare --workdirs=.demo/stages,.demo/stages_corn,.demo/stages_cnn \
		--names=stages,stages_corn,stages_cnn --out=.demo/stages_compare --perturbations=none
	$(if $(STAGES_EXPECT),$(PY) -m alz_jax.stages_figures --expect=$(STAGES_EXPECT) \
		$(if $(filter 0,$(STAGES_SEED)),--expect_uncertainty=docs/demo/stages/uncertainty.md))

# Publishes the last `make stages-compare` in docs/demo/stages/ (seed 0: and docs/stages.md's
# block; another seed: its compare_seed<N>.md only).
stages-figures: venv
	$(if $(filter 0,$(STAGES_SEED)),$(PY) -m alz_jax.stages_figures --update_docs,cp .demo/stages_compare/compare.md docs/demo/stages/compare_seed$(STAGES_SEED).md)

# What an image split does to the numbers: the standard synthetic stages written as the
# four-class folders (divided by image), trained as given (A) and with near-duplicate groups as
# subjects, re-split (B); the table checked against docs/demo/stages/image_split.md
# (SPLIT_EXPECT= to skip; CI runs it), or published with SPLIT_UPDATE=--update_docs.
SPLIT_EXPECT ?= docs/demo/stages/image_split.md
SPLIT_UPDATE ?=
SPLIT_DATA = --config.data.synthetic_layout=folders --config.data.synthetic_subjects=200 \
	--config.data.synthetic_difficulty=standard
stages-image-split: venv
	rm -rf .demo/split_a .demo/split_b
	$(PY) -m alz_jax.main --config=configs/stages_demo.py --workdir=.demo/split_a $(SPLIT_DATA)
	$(PY) -m alz_jax.main --config=configs/stages_demo.py --workdir=.demo/split_b $(SPLIT_DATA) \
		--config.data.group_near_duplicates=true --config.data.protocol=resplit \
		--config.data.resplit_fractions=0.7,0.15,0.15
	$(PY) -m alz_jax.stages_figures --what=image_split --workdirs=.demo/split_a,.demo/split_b \
		$(if $(SPLIT_EXPECT),--expect=$(SPLIT_EXPECT)) $(SPLIT_UPDATE)

# The volume demo (configs/volumes_demo.py): trains on a synthetic CAPS cohort of 3D volumes in
# .demo/volumes, writes a synthetic OASIS-1 release (another seed) and evaluates the run on it,
# skull-stripped and not; the table is checked against docs/demo/volumes/summary.md
# (VOLUMES_EXPECT= to skip; CI runs it) or published with `make demo-volumes-figures`.
VOLUMES_EXPECT ?= docs/demo/volumes/summary.md
VOLUMES_OASIS = .demo/oasis1_synthetic
demo-volumes: venv
	rm -rf .demo/volumes $(VOLUMES_OASIS)
	$(PY) -m alz_jax.main --config=configs/volumes_demo.py --workdir=.demo/volumes
	$(PY) -m alz_jax.synthetic --layout=oasis1 --out=$(VOLUMES_OASIS) --seed=1 --subjects=120
	for image in masked unmasked; do $(PY) -m alz_jax.evaluate --workdir=.demo/volumes \
		--data.manual_dir=$(VOLUMES_OASIS) --data.oasis_labels=binary \
		--data.oasis_image=$$image --cohort=oasis1_$$image || exit 1; done
	$(PY) -m alz_jax.volumes_figures --workdir=.demo/volumes $(if $(VOLUMES_EXPECT),--expect=$(VOLUMES_EXPECT))

demo-volumes-figures: venv
	$(PY) -m alz_jax.volumes_figures --workdir=.demo/volumes --update_docs

# Scan models against the slice model, on the demo's synthetic set and with as many training
# images (docs/scan_models.md): the demo's slice run (.demo/workdir: `make demo` first if it is
# missing), the scan demo with mean and with attention pooling, and attention pooling started
# from the slice run (200 more steps), compared with the slice run's position-weighted vote
# beside it; checked against docs/demo/scan/compare.md (SCAN_EXPECT= to
# skip; CI runs it) or published with `make demo-scan-figures`.
SCAN_EXPECT ?= docs/demo/scan/compare.md
demo-scan: venv
	test -f .demo/workdir/report_test.json || $(MAKE) --no-print-directory demo DEMO_EXPECT=
	rm -rf .demo/scan_mean .demo/scan_attention .demo/scan_attention_init .demo/scan_compare
	$(PY) -m alz_jax.main --config=configs/scan_demo.py --workdir=.demo/scan_mean \
		--config.model.aggregator=mean
	$(PY) -m alz_jax.main --config=configs/scan_demo.py --workdir=.demo/scan_attention
	$(PY) -m alz_jax.main --config=configs/scan_demo.py --workdir=.demo/scan_attention_init \
		--config.model.init_from=run:.demo/workdir --config.optim.learning_rate=2e-4 \
		--config.num_epochs=5 --config.warmup_epochs=1
	$(PY) -m alz_jax.compare \
		--workdirs=.demo/workdir,.demo/scan_mean,.demo/scan_attention,.demo/scan_attention_init \
		--names=slice,mean,attention,attention_from_slice --weighted_vote \
		--out=.demo/scan_compare --perturbations=none --timed_steps=0
	$(if $(SCAN_EXPECT),$(PY) -m alz_jax.stages_figures --compare_dir=.demo/scan_compare \
		--expect=$(SCAN_EXPECT))

demo-scan-figures: venv
	mkdir -p docs/demo/scan && cp .demo/scan_compare/compare.md docs/demo/scan/compare.md

# After `make demo`: copies its summary, quoted figures, report and figures (Grad-CAM as JPEG) into
# docs/demo/, then rewrites the demo blocks of README.md and docs/evaluation.md from them.
DEMO_WORKDIR ?= .demo/workdir
demo-figures: venv
	mkdir -p docs/demo
	cp $(DEMO_WORKDIR)/demo_summary.txt docs/demo/summary.txt
	cp $(DEMO_WORKDIR)/demo_figures.json docs/demo/figures.json
	sed 's/gradcam_test.png/gradcam_test.jpg/' $(DEMO_WORKDIR)/report_test.md > docs/demo/report_test.md
	for f in roc confusion reliability; do cp $(DEMO_WORKDIR)/$${f}_test.png docs/demo/; done
	$(PY) -c "import cv2; cv2.imwrite('docs/demo/gradcam_test.jpg', cv2.imread('$(DEMO_WORKDIR)/gradcam_test.png'), [cv2.IMWRITE_JPEG_QUALITY, 80])"
	$(PY) -m alz_jax.demo --update_docs

# The demo's comparison, regenerated from scratch (never edit docs/demo/compare.md by hand): `make
# demo` (.demo/workdir) and configs/demo_resnet.py (.demo/demo_resnet) trained on the demo's
# synthetic set, compared by `python -m alz_jax.compare` into .demo/compare, then published as
# docs/demo/compare.md with a generated first line (date, time taken, the commands) and the
# figures DEMO_COMPARE_FIGURES copied beside it (the other figures' links dropped). About 8
# minutes on a 2-core CPU.
DEMO_COMPARE_FIGURES ?= differences_subject robustness_blur
demo-compare: venv
	@set -e; start=$$(date +%s); \
	$(MAKE) --no-print-directory demo DEMO_EXPECT=; \
	rm -rf .demo/demo_resnet .demo/compare; \
	$(PY) -m alz_jax.main --config=configs/demo_resnet.py --workdir=.demo/demo_resnet; \
	$(PY) -m alz_jax.compare --workdirs=.demo/workdir,.demo/demo_resnet --out=.demo/compare; \
	took=$$(( $$(date +%s) - start )); \
	intro="*Generated by \`make demo-compare\` on $$(date -u +%Y-%m-%d) in $$((took / 60)) min $$((took % 60)) s: \`make demo\` (.demo/workdir), \`python -m alz_jax.main --config=configs/demo_resnet.py --workdir=.demo/demo_resnet\`, then \`python -m alz_jax.compare --workdirs=.demo/workdir,.demo/demo_resnet\`. $(words $(DEMO_COMPARE_FIGURES)) of its figures are kept here.*"; \
	awk -v intro="$$intro" -v keep=" $(DEMO_COMPARE_FIGURES) " \
		'NR == 1 { print; print ""; print intro; next } /^!\[/ { name = substr($$0, 3, index($$0, "]") - 3); if (!index(keep, " " name " ")) next } { print }' \
		.demo/compare/compare.md > docs/demo/compare.md; \
	for f in $(DEMO_COMPARE_FIGURES); do cp .demo/compare/$$f.png docs/demo/; done; \
	echo "Wrote docs/demo/compare.md and $(DEMO_COMPARE_FIGURES) ($$took s in all)."

# Opt-in: full-size ConvNeXt-T, ViT-S/16, ResNet-50 and EfficientNet-B0 against torchvision and
# timm (random weights; nothing is downloaded), in a separate virtualenv with PyTorch (several GB
# on x86_64, where pip brings a CUDA build).
TORCH_VENV ?= .venv-torch
parity-torch:
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt torch==2.14.1 torchvision==0.29.1 timm==1.0.31
	ALZ_JAX_TORCH_PARITY=1 $(TORCH_VENV)/bin/python -m pytest tests/test_convert.py tests/test_vit.py tests/test_resnet.py tests/test_efficientnet.py -k "full or pytorch_files" -v
parity-torchvision: parity-torch

clean:
	rm -rf .demo .pytest_cache .ruff_cache
