# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= data/demo
REPORTS?= out/demo-reports
DATA   ?= ../shared/data
BOUTIQUE_TAR := $(DATA)/nezha-onlineboutique/nezha-onlineboutique.tar.xz
BOUTIQUE := data/real/nezha-onlineboutique# unpacked once from BOUTIQUE_TAR (git-ignored)

.PHONY: demo test bench lint clean screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned: pip takes the local CPU build; an unpinned torch would pull a multi-GB CUDA build
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/melt generate --out $(DEMO) --force
	rm -rf $(REPORTS)  # reports of an earlier run would sit beside this run's
	$(BIN)/melt detect --data $(DEMO) --models all --out $(REPORTS)
	@echo "reports: $(REPORTS)/ (index.json lists them; ground truth in $(DEMO)/truth.json)"

# the suite in TEST_WORKERS processes (pytest-xdist), each file's tests in one of them so that its
# fixtures are built once; one math thread per process, as the processes already fill the cores
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/lint-imports  # the layer contracts in pyproject.toml (docs/architecture.md)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/synth_speed.py
	$(BIN)/python benchmarks/pipeline_synth.py
	$(BIN)/python benchmarks/rca_scale.py --services 100
	$(BIN)/python benchmarks/report_delivery.py --reports 1000
	$(BIN)/python benchmarks/metrics_synth.py quality
	$(BIN)/python benchmarks/metrics_synth.py speed
	$(BIN)/python benchmarks/teg_synth.py
	$(BIN)/python benchmarks/gat_synth.py
	$(BIN)/python benchmarks/logtraceguard_ablation.py
	$(BIN)/python benchmarks/logtraceguard_weights.py
	$(BIN)/python benchmarks/span_latency_ceiling.py
	$(BIN)/python benchmarks/serve_ingest.py
	$(BIN)/python benchmarks/serve_load.py --spans 20000 --minutes 10
	$(BIN)/python benchmarks/dask_bundle.py out/dask/large --days 1 --requests-per-minute 23
	$(BIN)/python benchmarks/dask_bundle.py out/dask/large5 --days 5 --requests-per-minute 23
	$(BIN)/python benchmarks/dask_scale.py out/dask/large5 out/dask/large --workers 2,1 --out out/dask/runs
	@if [ -d "$(DATA)/nab-dev" ]; then $(BIN)/python benchmarks/metrics_nab.py $(DATA)/nab-dev --detectors zscore,iforest,lstm_ae,changepoint && \
	$(BIN)/python benchmarks/forecast_backtest.py $(DATA)/nab-dev; \
	else echo "skipping NAB and the forecast backtest: no $(DATA)/nab-dev (set DATA=path/to/shared/data)"; fi
	@if [ -d "$(DATA)/skab" ]; then $(BIN)/python benchmarks/metrics_skab.py $(DATA)/skab; \
	else echo "skipping SKAB: no $(DATA)/skab (set DATA=path/to/shared/data)"; fi
	@if [ -d "$(DATA)/loghub-2k" ]; then $(BIN)/python benchmarks/logs_loghub.py $(DATA)/loghub-2k; \
	else echo "skipping loghub: no $(DATA)/loghub-2k (set DATA=path/to/shared/data)"; fi
	@if [ -d "$(DATA)/nezha-trainticket" ]; then $(BIN)/python benchmarks/import_nezha.py $(DATA)/nezha-trainticket && \
	$(BIN)/python benchmarks/logs_nezha.py $(DATA)/nezha-trainticket && \
	$(BIN)/python benchmarks/traces_nezha.py $(DATA)/nezha-trainticket; \
	else echo "skipping Nezha: no $(DATA)/nezha-trainticket (set DATA=path/to/shared/data)"; fi
	@if [ -f "$(BOUTIQUE_TAR)" ] && [ ! -d $(BOUTIQUE) ]; then mkdir -p data/real && tar -xJf $(BOUTIQUE_TAR) -C data/real; fi
	@systems=""; for d in $(DATA)/nezha-trainticket $(BOUTIQUE); do [ -d "$$d" ] && systems="$$systems $$d"; done; \
	if [ -n "$$systems" ]; then $(BIN)/python benchmarks/rca_nezha.py $$systems; \
	else echo "skipping root-cause ranking on Nezha: no TrainTicket or OnlineBoutique data"; fi

screenshot: $(STAMP)  # docs/img/incident-page.png (docs/serve.md), drawn by headless chromium from the current code
	MELT_SCREENSHOT=docs/img/incident-page.png $(BIN)/pytest -q tests/test_page.py -k chromium

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO) $(REPORTS) .pytest_cache
