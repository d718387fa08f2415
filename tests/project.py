"""A temporary git + DVC copy of the project with tiny params, for tests that run the pipeline for real."""

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tasks.telemetry import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
# the virtual environment's commands (rewardflow, dvc, mlflow, prefect): what a test puts first on PATH
VENV_BIN = Path(sys.executable).parent
TINY = {
    "task": {"n_train": 64, "n_heldout": 16, "n_validation": 16},
    "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "sft": {"max_steps": 3, "batch_size": 8, "logging_steps": 1},
    "grpo": {"max_steps": 2, "prompts_per_step": 2, "logging_steps": 1},
    "evaluate": {"batch_size": 8},
    # a model trained for 3 steps does not read; the gate's reading check has tests of its own (test_reading.py)
    "register": {"require_reading": False},
}


def copy_params(folder: Path) -> Path:
    """The project's params.yaml and the profiles it can select, copied into folder; returns the params file."""
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copytree(ROOT / "profiles", folder / "profiles", dirs_exist_ok=True)
    return folder / "params.yaml"


def overrides(sections: dict) -> list[str]:
    """`section.key=value` overrides for a {section: {key: value}} mapping (e.g. TINY)."""
    return [f"{section}.{key}={value}" for section, values in sections.items() for key, value in values.items()]


def tiny_params(root: Path, *extra: str):
    """Params for a tiny project under root: TINY's task, model shape and gate, outputs under root, then `extra`
    overrides; the task's data (train, held-out, validation) is generated on the first call."""
    from tasks.config import load_params
    from tasks.data import generate_dataset

    paths = [
        f"paths.train_file={root}/data/train.jsonl",
        f"paths.heldout_file={root}/data/heldout.jsonl",
        f"paths.validation_file={root}/data/validation.jsonl",
        f"paths.models_dir={root}/models",
        f"paths.reports_dir={root}/reports",
    ]
    shape = overrides({section: TINY[section] for section in ("task", "model", "register")})
    p = load_params(ROOT / "params.yaml", [*paths, *shape, *extra])
    if not Path(p.paths.train_file).exists():
        generate_dataset(p.paths, p.task)
    return p


def data_paths(folder: Path):
    """A PathsConfig with every file and folder of a project under folder (data files directly in it)."""
    from tasks.config import PathsConfig

    return PathsConfig(
        data_dir=str(folder),
        train_file=str(folder / "train.jsonl"),
        heldout_file=str(folder / "heldout.jsonl"),
        validation_file=str(folder / "validation.jsonl"),
        models_dir=str(folder / "models"),
        reports_dir=str(folder / "reports"),
    )


def sh(args, cwd, env, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_params(repo: Path, changes: dict) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        raw[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def tool_env() -> dict:
    """The environment for the project's commands (rewardflow, dvc, mlflow, prefect): the virtual env first on PATH,
    and this test process's shared Prefect server as PREFECT_API_URL (see shared_prefect_api). A test about
    Prefect's temporary server removes PREFECT_API_URL from it."""
    return {
        **os.environ,
        **TELEMETRY_OFF,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PREFECT_API_URL": shared_prefect_api(),
    }


# The folder every process of one test session shares (set by tests/conftest.py in the first process, inherited by
# xdist's workers).
SESSION_DIR_VAR = "REWARDFLOW_TEST_SESSION_DIR"
PREFECT_DB = "prefect.db"  # the file Prefect's default database URL names in PREFECT_HOME


def seed_prefect_home(home: Path) -> Path:
    """home as a Prefect home whose database already has Prefect's schema: a copy of one database migrated once per
    test session. A server started on an empty home runs every migration first (~7 s of CPU of the ~16 a fresh
    temporary server costs, measured); what a test checks of the server is the same either way. A home that has a
    database keeps it. Returns home."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    if (home / PREFECT_DB).exists():
        return home
    shared = Path(os.environ[SESSION_DIR_VAR])
    template = shared / "prefect-template" / PREFECT_DB
    with (shared / "prefect-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process migrates; the others wait for it, then copy
        if not template.exists():
            building = shared / f"prefect-template.{os.getpid()}"
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env |= {"PREFECT_HOME": str(building), **TELEMETRY_OFF}
            sh([str(VENV_BIN / "prefect"), "server", "database", "upgrade", "-y"], shared, env)
            building.rename(template.parent)
    shutil.copyfile(template, home / PREFECT_DB)
    return home


_SHARED_PREFECT: dict = {}


def shared_prefect_api() -> str:
    """The API URL of one `prefect server start` per test process (per xdist worker), started on first use, stopped
    when the process exits. The pipelines that tests run as commands record their flow runs there instead of each
    starting Prefect's temporary server (~10 s of CPU per run on 2 cores); what a test checks of a run is the same
    on either server. The temporary server's own behaviour is tested where a test removes PREFECT_API_URL."""
    if "api" not in _SHARED_PREFECT:
        stack = contextlib.ExitStack()
        _SHARED_PREFECT["api"] = stack.enter_context(
            prefect_server(Path(os.environ["PREFECT_HOME"]) / "shared-server", like_temporary=True)
        )
        _SHARED_PREFECT["stack"] = stack
        atexit.register(stop_shared_prefect)
        # the temporary servers that tests start in this process's own home (tests/conftest.py) skip the migrations
        seed_prefect_home(Path(os.environ["PREFECT_HOME"]))
    return _SHARED_PREFECT["api"]


def stop_shared_prefect() -> None:
    """Stop this process's shared Prefect server, if it started one (tests/conftest.py, before its home goes)."""
    stack = _SHARED_PREFECT.pop("stack", None)
    _SHARED_PREFECT.pop("api", None)
    if stack is not None:
        stack.close()


def make_repo(repo: Path, generate: bool = True):
    """A git + DVC repository with the project's tracked files, tiny params (and generated data)."""
    env = tool_env()
    files = sh(["git", "ls-files"], ROOT, env).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, repo / name)
    set_params(repo, TINY)
    sh(["git", "init", "-q"], repo, env)
    sh(["rewardflow", "data", "generate"], repo, env)
    sh(["dvc", "add", "-q", "data"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)
    if not generate:  # as on a fresh clone: data.dvc pins files that are not there yet
        shutil.rmtree(repo / "data")
        shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    return repo, env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float) -> None:
    """Poll url until it answers; fail with the process's stderr if it dies or the time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                raise AssertionError(f"{url} did not come up: {err}") from None
            time.sleep(0.5)


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, seconds: float = 120):
    """`mlflow server` on 127.0.0.1 (one worker) with this backend store; yields its URI, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, seconds)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def grpo_step(
    p, reward, *, group: int, prompts: int = 1, min_unique_ratio: float, only_tokens=(), credit="sequence", **config
):
    """One real GRPO step of the pipeline's trainer (RewardflowGRPOTrainer) on the built-in model, untrained, with
    `reward` as the only reward function; `only_tokens` restricts what generation may sample (through the
    generation config's suppress_tokens); `credit` is grpo.credit. Returns what it saw: the completions, TRL's own
    advantages (before the article's rules replace them), the advantages the update used, the step's log entry,
    and whether any parameter moved."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from tasks.data import read_jsonl
    from tasks.grpo_trainer import grpo_trainer_class
    from tasks.modeling import load_base_model
    from tasks.trainer_setup import device_kwargs

    rows = read_jsonl(p.paths.train_file)
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    before = [t.detach().clone() for t in model.parameters()]
    if only_tokens:
        allowed = set(tokenizer.convert_tokens_to_ids(list(only_tokens)))
        config["generation_kwargs"] = {"suppress_tokens": [i for i in range(len(tokenizer)) if i not in allowed]}
    seen = {"completions": [], "trl": [], "used": []}

    def scored(completions, **kwargs):
        seen["completions"] += [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return reward(completions, **kwargs)

    scored.__name__ = reward.__name__

    class TRLAdvantages(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            seen["trl"] += out["advantages"].tolist()
            return out

    class Recording(grpo_trainer_class(), TRLAdvantages):  # TRL's step, then the article's rules on top
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            seen["used"] += out["advantages"].tolist()
            return out

    args = GRPOConfig(
        output_dir=str(Path(p.paths.models_dir) / "scratch"),
        **device_kwargs(),
        **{
            "seed": p.seed,
            "max_steps": 1,
            "per_device_train_batch_size": group * prompts,
            "num_generations": group,
            "max_completion_length": 4,
            "learning_rate": 1e-2,
            "beta": 0.0,
            "logging_steps": 1,
            "shuffle_dataset": False,
            **config,
        },
    )
    trainer = Recording(
        model=model,
        reward_funcs=[scored],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "scores": r["scores"]} for r in rows]),
        processing_class=tokenizer,
        reward_config=p.reward.config,
        min_std=p.grpo.min_std,
        min_unique_ratio=min_unique_ratio,
        credit=credit,
    )
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "reward_stats/zero_std_group_frac" in e)
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    finite = all(torch.isfinite(t).all() for t in model.parameters())
    return {**seen, "log": logged, "moved": moved, "finite": finite}


# fp32 on a CPU: the shared-prefix and the row-wise pass add the same terms in a different order. Relative to the
# largest value compared. On SmolLM2 (30 layers), TRL's own pass moves its log-probs by 2.5e-5 (of up to 40) when
# the batch gains three padding columns, the shared-prefix pass by 3.8e-5; through the importance ratios that is
# 3e-5 of the loss. On the built-in model, letting a completion see another moves log-probs by up to 0.4.
SHARED_PREFIX_RTOL = 1e-4


def make_trainer(model, tokenizer, train_file, tmp_path, shared_prefix, peft_config=None, **config):
    """The pipeline's GRPO trainer (RewardflowGRPOTrainer) on this model, as run_grpo sets it up, with a reward of
    zero (its loss is what is under test); `config` overrides GRPOConfig."""
    from datasets import Dataset
    from trl import GRPOConfig

    from tasks.data import read_jsonl
    from tasks.grpo_trainer import grpo_trainer_class
    from tasks.rewards import RewardConfig
    from tasks.trainer_setup import device_kwargs, score_labelled_positions_only

    score_labelled_positions_only()  # as run_grpo does

    def reward(completions, **kwargs):
        return [0.0] * len(completions)

    rows = read_jsonl(train_file)
    args = GRPOConfig(
        output_dir=str(tmp_path / "scratch"),
        **device_kwargs(),
        **{"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4, "temperature": 0.7, **config},
    )
    return grpo_trainer_class()(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "scores": r["scores"]} for r in rows]),
        processing_class=tokenizer,
        reward_config=RewardConfig(),
        min_std=0.01,
        min_unique_ratio=0.0,
        shared_prefix=shared_prefix,
        peft_config=peft_config,
    )


def grpo_batch(tokenizer, prompts, group, padding_side, vocab, seed=0):
    """What TRL's _compute_loss receives: each prompt `group` times (padded on `padding_side`), completions of
    unequal lengths (one empty) right-padded, and advantages; rows shuffled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    rows, completion_width = len(prompts) * group, 6
    prompt_ids = torch.full((rows, width), tokenizer.pad_token_id)
    prompt_mask = torch.zeros(rows, width, dtype=torch.long)
    completion_ids = torch.full((rows, completion_width), tokenizer.pad_token_id)
    completion_mask = torch.zeros(rows, completion_width, dtype=torch.long)
    for k, ids in enumerate(encoded):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        for j in range(group):
            row = k * group + j
            prompt_ids[row, span], prompt_mask[row, span] = torch.tensor(ids), 1
            n = 0 if (k, j) == (0, 1) else 1 + (j * 5 + k) % completion_width
            completion_ids[row, :n] = torch.randint(1, vocab, (n,), generator=gen)
            completion_mask[row, :n] = 1
    order = torch.randperm(rows, generator=gen)
    batch = {
        "prompt_ids": prompt_ids[order],
        "prompt_mask": prompt_mask[order],
        "completion_ids": completion_ids[order],
        "completion_mask": completion_mask[order],
        "advantages": torch.randn(rows, generator=gen),
    }
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return batch


def both_passes(trainer, batch, reference=None):
    """Per-token log-probs and entropies, the loss and every trainable gradient: TRL's row-wise pass on `reference`
    (default: the batch), then the shared-prefix pass on the batch."""
    import torch

    reference = reference or batch
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets before its first step

    def rows(b):
        ids = torch.cat([b["prompt_ids"], b["completion_ids"]], dim=1)
        return ids, torch.cat([b["prompt_mask"], b["completion_mask"]], dim=1)

    width = batch["completion_ids"].size(1)
    with torch.no_grad():
        trainer.shared_prefix = False
        old, _, _ = trainer._get_per_token_logps_and_entropies(model, *rows(reference), width)
    # the sampling policy a little off the current one, so that the ratio and its clipping take part
    old = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    out = {}
    for shared in (False, True):
        trainer.shared_prefix = shared
        ids, mask = rows(batch if shared else reference)
        model.zero_grad()
        with torch.no_grad():
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                model, ids, mask, width, compute_entropy=True
            )
        loss = trainer._compute_loss(model, {**(batch if shared else reference), "old_per_token_logps": old})
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        out[shared] = (logps, entropies, loss.item(), grads)
    return out, batch["completion_mask"].bool()


def assert_equal_passes(out, mask) -> dict[str, float]:
    """both_passes' results agree within fp32 tolerance; returns the largest relative differences seen."""
    import torch

    (logps, ent, loss, grads), (s_logps, s_ent, s_loss, s_grads) = out[False], out[True]
    largest_grad = max(g.abs().max().item() for g in grads.values())
    seen = {
        "logp": (logps - s_logps)[mask].abs().max().item() / logps[mask].abs().max().item(),
        "entropy": (ent - s_ent)[mask].abs().max().item() / ent[mask].abs().max().item(),
        "grad": max((grads[n] - s_grads[n]).abs().max().item() for n in grads) / largest_grad,
        "loss": abs(loss - s_loss) / abs(loss),
    }
    print(f"largest relative differences: {seen}")
    assert seen["logp"] < SHARED_PREFIX_RTOL and seen["entropy"] < SHARED_PREFIX_RTOL
    assert torch.all(s_logps[~mask] == 0) and torch.all(logps[~mask] == 0)  # padding scores nothing in either
    assert seen["loss"] < SHARED_PREFIX_RTOL
    assert grads.keys() == s_grads.keys() and grads
    assert seen["grad"] < SHARED_PREFIX_RTOL
    assert largest_grad > 1e-4  # the comparison is not of zeros
    return seen


def stop_group(proc: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM to the process group of proc (started with start_new_session=True), SIGKILL if it lingers."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=seconds)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def prefect_server(home: Path, seconds: float = 180, like_temporary: bool = False):
    """`prefect server start` on 127.0.0.1 (no UI) with its own PREFECT_HOME; yields its API URL, stops it and its
    children afterwards. By default with every service and a 2 s scheduler loop (a new schedule's runs exist within
    seconds); like_temporary: with only the services of the temporary server a flow starts when no server is set
    (Prefect's PREFECT__SERVER_EPHEMERAL), which is what a pipeline run by hand talks to. The home's database is
    seeded (seed_prefect_home)."""
    seed_prefect_home(home)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home), **TELEMETRY_OFF}
    if like_temporary:
        env["PREFECT__SERVER_EPHEMERAL"] = "1"
    else:
        env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"
    port = free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            *(str(Path(sys.executable).parent / "prefect"), "server", "start", "--no-ui"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        try:
            wait_for(f"{api}/health", proc, seconds)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{(home / 'server.log').read_text()[-3000:]}") from None
        yield api
    finally:
        stop_group(proc)
        log.close()


@contextlib.contextmanager
def http_receiver():
    """An HTTP server on 127.0.0.1 that records the JSON body of every POST; yields (its URL, the list of bodies)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body or b"null"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def wait_until(check, seconds: float, what: str, every: float = 1.0):
    """check() until it returns something truthy (returned); fail naming `what` when the time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def prefect_api(api: str):
    """A synchronous Prefect client on the server at `api` (and Prefect's settings pointing there meanwhile)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


@contextlib.contextmanager
def use_store(uri):
    """Point MLflow (tracking and registry) at uri, then put back exactly what was there, env vars included:
    set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_uri_state
    from mlflow.tracking._tracking_service import utils as tracking_uri_state

    saved_env = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking, saved_registry = tracking_uri_state._tracking_uri, registry_uri_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(saved_tracking)
        mlflow.set_registry_uri(saved_registry)
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
