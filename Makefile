# Shortcuts for the README's two commands (scripts/demo.sh, scripts/test.sh), and more.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo cni-demo test unit bench clean
bootstrap:
	@scripts/bootstrap.sh

demo:
	scripts/demo.sh

cni-demo: bootstrap
	$(PY) -m netlab.cni_demo

test:
	scripts/test.sh

unit: bootstrap
	$(PY) -m pytest -ra tests/unit

bench: bootstrap
	$(PY) bench/cni.py
	$(PY) bench/lab.py
	$(PY) bench/throughput.py
	$(PY) bench/proxy.py
	$(PY) bench/datapath.py
	$(PY) bench/netprog.py
	$(PY) bench/dns.py
	$(PY) bench/trace.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) *.egg-info
