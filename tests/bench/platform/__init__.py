"""The platform overhead benchmark: the whole stack with the echo worker, open-loop load, CPU and memory per process
(`python -m tests.bench.platform`; not in `make test`)."""
