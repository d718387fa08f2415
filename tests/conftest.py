"""How the suite runs: `make test` uses pytest-xdist workers (the Makefile's TEST_WORKERS), each taking whole files
(`--dist loadfile`): a file's tests share its module fixtures (one project, one server) and run in the file's order.
Each worker has its own Prefect home, one compute thread (OMP_NUM_THREADS=1, inherited by the commands it starts)
and, on first use, its own Prefect server for the pipelines tests run as commands (tests/project.py
shared_prefect_api). The processes of one session share a folder (REWARDFLOW_TEST_SESSION_DIR) holding one Prefect
database migrated once, which every Prefect home the tests make starts from (tests/project.py seed_prefect_home).
A module marked `ordered` is one scenario in steps on one shared project; the tests of every other module pass in
reverse order too. `--order reverse` or `--order random --order-seed N` reorders modules and the
tests inside the unordered ones; by default the modules marked `slow` go first (`--order slow-first`), and xdist
hands out files in that order (`--no-loadscope-reorder`: not its own order, most tests first). Plain `pytest` (no -n)
runs everything in one process: the way to run one test.
"""

import os
import shutil
import sys
import tempfile

import pytest

from tasks import telemetry

# Tests never touch the network.
telemetry.turn_off()
for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(var, value)


def pytest_configure(config):
    """A Prefect home of this test process's own (one per xdist worker): every temporary Prefect server a test's
    pipeline starts keeps its SQLite database there, never in the user's ~/.prefect, and two workers never share
    one. Set before any test imports Prefect, which reads PREFECT_HOME when first imported."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    from project import SESSION_DIR_VAR

    if SESSION_DIR_VAR not in os.environ:  # the session's first process; xdist's workers inherit the variable
        config._rewardflow_session_dir = tempfile.mkdtemp(prefix="rewardflow-tests-session-")
        os.environ[SESSION_DIR_VAR] = config._rewardflow_session_dir
    home = tempfile.mkdtemp(prefix=f"rewardflow-tests-prefect-{worker}-")
    config._rewardflow_prefect_home = home
    os.environ["PREFECT_HOME"] = home
    if worker != "main":
        # Several workers share the cores: one compute thread each (and in the commands they start). Two OpenMP
        # threads a worker spin-wait against each other's: a tiny SFT took 10x its serial time with 3 workers.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_unconfigure(config):
    project = sys.modules.get("project")  # tests/project.py, once a test imported it
    if project is not None:
        project.stop_shared_prefect()
    for folder in ("_rewardflow_prefect_home", "_rewardflow_session_dir"):
        if getattr(config, folder, None):
            shutil.rmtree(getattr(config, folder), ignore_errors=True)


MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_store_put_back():
    """mlflow.set_tracking_uri/set_registry_uri write MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI into os.environ (so
    that subprocesses inherit them): after a test that ran the pipeline in this process, both are put back as they
    were, or a later test's commands (whose environment copies os.environ) would write into that test's store."""
    saved = {var: os.environ.get(var) for var in MLFLOW_URI_VARS}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for var, value in saved.items():
        os.environ.pop(var, None)
        if value is not None:
            os.environ[var] = value


ORDERS = ("slow-first", "file", "reverse", "random")


def pytest_addoption(parser):
    parser.addoption(
        "--order",
        choices=ORDERS,
        default="slow-first",
        help="test order: slow-first (the modules marked `slow` first, then the others, each group as written), "
        "file (as written), reverse, or random (with --order-seed); a module marked `ordered` moves as a whole "
        "and keeps its own order (its tests are the steps of one scenario)",
    )
    parser.addoption("--order-seed", type=int, default=None, help="the seed of --order random")


def pytest_report_header(config):
    order = config.getoption("--order")
    if order == "random":
        return f"test order: random, seed {config.getoption('--order-seed')}"
    return f"test order: {order}"


def pytest_collection_modifyitems(config, items):
    """Reorder: for slow-first, the modules marked `slow` move ahead of the others (xdist hands out whole files in
    this order, so the long ones start first and the short ones fill the end, instead of a long file starting last
    while the other workers run out of work); for reverse|random, modules and the tests inside each module not
    marked `ordered`. The order is a function of the collected items and the seed only, so every xdist worker
    computes the same one."""
    import random

    order = config.getoption("--order")
    if order == "file":
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(str(item.path), []).append(item)
    groups = list(modules.values())
    if order == "slow-first":
        # a stable sort: each group keeps its file order
        groups.sort(key=lambda group: not any(item.get_closest_marker("slow") for item in group))
        items[:] = [item for group in groups for item in group]
        return
    seed = config.getoption("--order-seed")
    if order == "random" and seed is None:
        raise pytest.UsageError("--order random needs --order-seed N (the seed is what reproduces a failing order)")
    shuffle = random.Random(seed).shuffle if order == "random" else list.reverse
    for group in groups:
        if not group[0].get_closest_marker("ordered"):
            shuffle(group)
    shuffle(groups)
    items[:] = [item for group in groups for item in group]
