# The two commands a newcomer needs (run as root):
#   make demo   set up, then bring up topologies/two-node.yaml and show pods talking across nodes
#   make test   set up, then run every test
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo cni-demo test unit bench clean
bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m netlab.demo

cni-demo: bootstrap
	$(PY) -m netlab.cni_demo

test: bootstrap
	$(PY) -m pytest -ra

unit: bootstrap
	$(PY) -m pytest -ra tests/unit

bench: bootstrap
	$(PY) bench/cni.py
	$(PY) bench/lab.py
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) *.egg-info
