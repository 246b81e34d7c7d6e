# dlm: `make demo` and `make test` create the virtual environment themselves.
# TORCH_SPEC picks the torch build installed before dlm (an unpinned torch pulls CUDA wheels);
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" make install
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-unit bench bench-all bench-all-quick block-recipe bench-block bench-edlm bench-lsd design-demo design-demo-dna long-context bench-zero-shot lint clean

$(BIN)/.dlm-installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,eval]"
	touch $@

install: $(BIN)/.dlm-installed

demo: install
	$(BIN)/dlm-demo

test: install
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests -m "not slow"

bench: install
	$(BIN)/dlm-bench train

# every benchmark, then benchmarks/README.md (bench-all-quick: small settings into benchmarks/quick/)
bench-all: install
	$(BIN)/dlm-bench all

bench-all-quick: install
	$(BIN)/dlm-bench all --quick

# CPU block-diffusion recipe: pretrain a small AR model, convert it to Hugging Face format and
# back as a block-causal dlm model, adapt it as block diffusion (block size 4), evaluate both.
block-recipe: install
	$(BIN)/dlm-train experiment=block_cpu_ar
	$(BIN)/dlm-convert src=runs/block_cpu/ar/model dst=runs/block_cpu/ar_hf direction=to_hf
	$(BIN)/dlm-convert src=runs/block_cpu/ar_hf dst=runs/block_cpu/converted_block direction=to_dlm attention=block_causal block_size=4
	$(BIN)/dlm-train experiment=block_cpu_adapt
	$(BIN)/dlm-eval-ppl model=runs/block_cpu/ar/model data=pydoc num_samples=8 method=quadrature
	$(BIN)/dlm-eval-ppl model=runs/block_cpu/block/model data=pydoc num_samples=8 method=quadrature

bench-block: install
	$(BIN)/dlm-bench block

# EDLM vs the ancestral sampler: the demo RADD denoiser and AR energy; the NCE energy and the
# independent judge are trained by the benchmark (runs/bench_edlm)
bench-edlm: install
	test -f runs/demo_radd/model/model.json || $(BIN)/dlm-train experiment=demo_radd run_dir=runs/demo_radd
	test -f runs/demo_ar/model/model.json || $(BIN)/dlm-train experiment=demo_ar run_dir=runs/demo_ar
	$(BIN)/dlm-bench edlm

# LSD / LSD+ schedules (4, 8, 16 steps) vs the base sampler at matched entropy, on the demo RADD model;
# the independent judge is dlm-bench edlm's (runs/bench_edlm/judge, trained when absent). ~15 min on 2 idle cores
bench-lsd: install
	test -f runs/demo_radd/model/model.json || $(BIN)/dlm-train experiment=demo_radd run_dir=runs/demo_radd
	OMP_NUM_THREADS=2 $(BIN)/dlm-bench lsd

# GB1 sequence design: base model, fine-tuning oracle, DRAKES (alpha sweep + alpha = 0), then dlm-design for every
# method at matched network calls; table benchmarks/results/design.json + plot. ~10 min on 2 CPU cores
design-demo: install
	$(BIN)/dlm-bench design

# DNA design on 200-bp windows of the human chr1 fragment (../shared/data): the "dna" block of design.json. ~6 min
design-demo-dna: install
	$(BIN)/dlm-bench design gb1=false dna=true dna_settings.motif_file=../shared/data/dna/JASPAR2022_CORE_non-redundant_pfms.meme

# Long context: the needle model (experiment=needle_demo) and its AR control (same recipe, causal), trained into
# runs/bench_long unless there; needle grids and perplexity at 1x/2x/4x/8x their training length, without and
# with NTK RoPE scaling. ~16 min on 2 idle cores, training included; table and plots in benchmarks/results/long_context*
long-context: install
	$(BIN)/dlm-bench long

# Zero-shot WikiText-2 / LAMBADA-format scores through the lm-eval adapter beside dlm-eval-ppl, and an HF causal
# LM converted with dlm-convert beside lm-eval's HF backend (reads ../shared/data); table benchmarks/results/zero_shot.json
bench-zero-shot: install
	test -f runs/demo_radd/model/model.json || $(BIN)/dlm-train experiment=demo_radd run_dir=runs/demo_radd
	test -f runs/demo_ar/model/model.json || $(BIN)/dlm-train experiment=demo_ar run_dir=runs/demo_ar
	$(BIN)/dlm-bench zero_shot

lint: install
	$(BIN)/ruff check dlm tests scripts

clean:
	rm -rf $(VENV) .cache runs
