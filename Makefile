# Two commands for a newcomer (README): `make demo` and `make test`.
# `make demo RUNNER=prism|flink|flink-cluster` runs the demo on another runner (it builds what it needs);
# flink-cluster: a local Flink session cluster (2 task managers, a Python worker pool), the job submitted detached.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BEAM_VERSION := $(shell sed -n 's/^apache-beam==//p' requirements.lock)
BUILD := $(CURDIR)/build
PRISM := $(BUILD)/bin/prism
JOB_SERVER := $(BUILD)/flink-job-server/flink-job-server.jar
FLINK_VENV := .venv-flink
FLINK_STAMP := $(FLINK_VENV)/.installed
CHECKOV_VENV := $(BUILD)/checkov-venv
CHECKOV := $(CHECKOV_VENV)/bin/checkov
TF_SCHEMA_NPM := $(BUILD)/terraform-provider-schema
TF_SCHEMA := $(TF_SCHEMA_NPM)/node_modules/@cdktf/provider-google/.jsii
TOXIPROXY_VERSION := 2.5.0
TOXIPROXY := $(BUILD)/bin/toxiproxy-server
VEGETA_VERSION := 12.13.0
VEGETA := $(BUILD)/bin/vegeta
DASHBOARD_NPM := $(BUILD)/dashboard
DASHBOARD_JS := $(DASHBOARD_NPM)/node_modules/uplot/dist/uPlot.iife.min.js
RUNNER ?= local
RUNNER_BUILDS_local :=
RUNNER_BUILDS_prism := $(PRISM)
RUNNER_BUILDS_flink := $(JOB_SERVER)
RUNNER_BUILDS_flink-cluster := $(JOB_SERVER) $(FLINK_STAMP)

.PHONY: venv prism flink-job-server flink-venv checkov tf-schema toxiproxy vegeta runners js browser demo bench lint format test test-fast test-cluster clean

venv: $(STAMP)

# The runtime pins (requirements.lock: what the Dataflow launcher and the stats service images
# install) and the development pins (requirements-dev.lock: local tooling, tests, benchmarks).
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .  # built by the pinned setuptools
	touch $(STAMP)

# Prism from the Go module proxy at the pinned Beam version. The checksum database
# reachable here has no record of the Beam module, so only it skips that lookup
# (its dependencies are still checked against Beam's own go.sum).
prism: $(PRISM)
$(PRISM): requirements.lock
	@command -v go >/dev/null || { echo "needs Go to build Prism"; exit 1; }
	GOBIN=$(BUILD)/bin GONOSUMDB=github.com/apache/beam GOFLAGS=-mod=mod \
		go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

# Beam's Flink job server from Maven Central (infra/flink/job-server/pom.xml says why it is assembled).
flink-job-server: $(JOB_SERVER)
$(JOB_SERVER): requirements.lock infra/flink/job-server/pom.xml
	@command -v mvn >/dev/null || { echo "needs Maven and Java 17 to fetch the Flink job server"; exit 1; }
	mvn -q -B -f infra/flink/job-server/pom.xml -Dbeam.version=$(BEAM_VERSION) \
		-Dbuild.dir=$(BUILD)/flink-job-server package

# A Flink session cluster (and PyFlink) from the apache-flink wheels, in a venv of its own:
# apache-flink pins an older apache-beam than this project's.
flink-venv: $(FLINK_STAMP)
$(FLINK_STAMP): infra/flink/requirements.lock
	test -x $(FLINK_VENV)/bin/python || $(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(FLINK_VENV)/bin/pip install --quiet --no-deps -r infra/flink/requirements.lock
	touch $(FLINK_STAMP)

# checkov (static checks of infra/terraform, tests/test_checkov.py) in a venv of its own:
# checkov pins packaging<24, requirements.lock has a newer one.
checkov: $(CHECKOV)
$(CHECKOV): requirements-checkov.lock
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(CHECKOV_VENV)/bin/pip install --quiet --no-deps -r requirements-checkov.lock
	touch $(CHECKOV)

# The google provider's schema, for the offline check terraform validate would make
# (tests/test_terraform_schema.py): the provider itself comes only from the Terraform registry,
# which is not reachable here; its prebuilt CDKTF bindings on the npm registry carry the same
# schema (a jsii assembly: every resource's arguments and blocks, required or not).
tf-schema: $(TF_SCHEMA)
$(TF_SCHEMA): infra/terraform/provider-schema/package.json infra/terraform/provider-schema/package-lock.json
	@command -v npm >/dev/null || { echo "needs npm (Node.js) to fetch the provider schema"; exit 1; }
	mkdir -p $(TF_SCHEMA_NPM)
	cp infra/terraform/provider-schema/package.json infra/terraform/provider-schema/package-lock.json $(TF_SCHEMA_NPM)/
	cd $(TF_SCHEMA_NPM) && npm ci --omit=peer --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(TF_SCHEMA)

# Toxiproxy (the fault-injecting TCP proxy of the `faults` tests: viewcounts/local/faultproxy.py)
# from the Go module proxy, at an exact version; `go install` names the binary after its
# package folder (`server`), so it is built in a folder of its own and renamed.
toxiproxy: $(TOXIPROXY)
$(TOXIPROXY): Makefile
	@command -v go >/dev/null || { echo "needs Go to build Toxiproxy"; exit 1; }
	GOBIN=$(BUILD)/toxiproxy-gobin \
		go install github.com/Shopify/toxiproxy/v2/cmd/server@v$(TOXIPROXY_VERSION)
	mkdir -p $(BUILD)/bin && mv $(BUILD)/toxiproxy-gobin/server $(TOXIPROXY) && rmdir $(BUILD)/toxiproxy-gobin

# Vegeta (the constant-rate HTTP load generator of the stats service's benchmark,
# viewcounts/bench/http.py) from the Go module proxy, at an exact version.
vegeta: $(VEGETA)
$(VEGETA): Makefile
	@command -v go >/dev/null || { echo "needs Go to build Vegeta"; exit 1; }
	GOBIN=$(BUILD)/bin go install github.com/tsenart/vegeta/v12@v$(VEGETA_VERSION)
	touch $(VEGETA)

runners: prism flink-job-server flink-venv toxiproxy vegeta

# The dashboard's JavaScript (uPlot, query/dashboard/package-lock.json) from the npm registry
# into build/dashboard, where `viewcounts serve` (query/dashboard.py) serves it from: the page
# loads nothing from the internet.
js: $(DASHBOARD_JS)
$(DASHBOARD_JS): query/dashboard/package.json query/dashboard/package-lock.json
	@command -v npm >/dev/null || { echo "needs npm (Node.js) to fetch the dashboard's JavaScript"; exit 1; }
	mkdir -p $(DASHBOARD_NPM)
	cp query/dashboard/package.json query/dashboard/package-lock.json $(DASHBOARD_NPM)/
	cd $(DASHBOARD_NPM) && npm ci --no-audit --no-fund --loglevel=error
	touch $(DASHBOARD_JS)

# Debian's Chromium (and its driver) for the dashboard's browser test (tests/test_dashboard_browser.py,
# Playwright driving /usr/bin/chromium; no browser build is downloaded), with apt-get as root or
# through sudo; elsewhere a note, and that test skips.
browser:
	@if [ -x /usr/bin/chromium ]; then /usr/bin/chromium --version; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "note: no root or sudo to install Debian's chromium: the browser test (pytest -m browser) will skip"; fi

demo: venv js $(RUNNER_BUILDS_$(RUNNER))
	$(BIN)/viewcounts demo --runner $(RUNNER)

bench: venv flink-venv vegeta
	$(BIN)/viewcounts bench --json $(BUILD)/bench.json

test: venv runners js browser checkov tf-schema lint
	$(BIN)/pytest

test-fast: venv js checkov tf-schema lint
	$(BIN)/pytest -m "not slow"

# the formatter and the linter (pyproject.toml [tool.ruff]); `make format` applies both fixes
lint: venv
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .

format: venv
	$(BIN)/ruff format --quiet .
	$(BIN)/ruff check --quiet --fix .

# the production recipe on a local session cluster: detached submission, faults, rescaling
test-cluster: venv flink-job-server flink-venv
	$(BIN)/pytest -m cluster

clean:
	rm -rf $(VENV) $(FLINK_VENV) $(BUILD) demo-out .pytest_cache
