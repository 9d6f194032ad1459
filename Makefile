# edge-agent: set-up, run, test, benchmark.
# Data and models are read in place: point EDGE_AGENT_SHARED_DIR at the shared data folder
# (faces, video, models), or MODEL_SOURCE at a folder of model files. Without either, models
# are downloaded from their official locations (README, "Models").

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
MODELS   ?= models
DATA_DIR ?= data
ifdef EDGE_AGENT_SHARED_DIR
MODEL_SOURCE ?= $(EDGE_AGENT_SHARED_DIR)/models
SOURCE       ?= $(EDGE_AGENT_SHARED_DIR)/video/short_hamilton_clip.mp4
endif
SOURCE   ?= 0
CONFIG   ?= device_configs/x86-cpu.yaml
HOST     ?= 127.0.0.1
PORT     ?= 8080

export EDGE_AGENT_MODELS := $(abspath $(MODELS))
export EDGE_AGENT_DATA_DIR ?= $(abspath $(DATA_DIR))

.PHONY: setup venv models run test bench eval-anonymizer install-service clean

setup: venv models ## virtualenv, pinned dependencies, verified models

venv: $(VENV)/.installed
$(VENV)/.installed: requirements/runtime.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

models: venv
	$(PY) -m edge_agent.models.fetch --dest $(MODELS) $(if $(MODEL_SOURCE),--source $(MODEL_SOURCE))

run: setup ## filter SOURCE and serve the live page on HOST:PORT
	$(VENV)/bin/edge-agent --config $(CONFIG) run --source "$(SOURCE)" --camera demo --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run_all.py

eval-anonymizer: setup
	$(PY) -m model_export.anonymizer eval

install-service:
	sudo bash systemd/install.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
