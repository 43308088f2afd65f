"""Training one job: labeled + unlabeled batches, ``ssl_loss``, Adam, per-epoch evaluation.

The trainer knows nothing of databases: it reports each finished epoch (metrics and a
checkpoint) through a callback and can be asked to stop between steps. Every random choice
(labeled split, initialisation, batch order, dropout) flows from the job's seed, and the
checkpoint carries all of that state, so a resumed job continues exactly where it stopped.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Optional

import torch
from torch import Tensor, nn

from invssl import data as datasets
from invssl import models
from invssl.config import JobConfig
from invssl.devices import resolve_device, tune_cpu_allocator
from invssl.errors import JobError
from invssl.evaluation import evaluate
from invssl.inversion import ssl_loss
from invssl.lookahead import Weights, learned_step
from invssl.schedules import make_schedule

# Loss values are checked for NaN/inf every this many steps; each check synchronises the device.
CHECK_EVERY = 50
LOSS_TERMS = ("loss", "ce", "recon", "entropy")


@dataclass
class Prepared:
    """A job's tensors on its device, split as the job's seed says."""

    x_lab: Tensor  # (N_L, *S)
    y_lab: Tensor  # (N_L,)
    x_unl: Tensor  # (N_U, *S)
    x_val: Tensor  # (N_V, *S)
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    groups_test: Optional[Tensor]
    split: datasets.Split
    info: datasets.DatasetInfo


@lru_cache(maxsize=2)
def _load_dataset(name: str, root: Optional[str], download: bool, params: str, scaling: str) -> datasets.Dataset:
    # Jobs of one sweep share their dataset: load and scale it once per process.
    ds = datasets.load(name, root=root, download=download, **json.loads(params))
    if scaling == "standardize":
        return ds
    return replace(
        ds,
        x_train=datasets.scale_inputs(ds.x_train, ds.norm, scaling),
        x_test=datasets.scale_inputs(ds.x_test, ds.norm, scaling),
    )


def prepare(config: JobConfig, device: torch.device) -> Prepared:
    ds = _load_dataset(
        config.dataset,
        config.data_root,
        config.download,
        json.dumps(config.data_params, sort_keys=True),
        config.input_scaling,
    )
    split = datasets.make_split(
        ds.y_train.numpy(),
        config.n_labeled,
        config.seed,
        n_val=config.val_size,
        groups=None if ds.groups_train is None else ds.groups_train.numpy(),
    )

    def take(t: Tensor, idx: Any) -> Tensor:
        return t[torch.as_tensor(idx, dtype=torch.long)].to(device)

    return Prepared(
        x_lab=take(ds.x_train, split.labeled),
        y_lab=take(ds.y_train, split.labeled),
        x_unl=take(ds.x_train, split.unlabeled),
        x_val=take(ds.x_train, split.validation),
        y_val=take(ds.y_train, split.validation),
        x_test=ds.x_test.to(device),
        y_test=ds.y_test.to(device),
        groups_test=ds.groups_test,
        split=split,
        info=ds.info,
    )


def steps_per_epoch(config: JobConfig, n_unlabeled: int) -> int:
    """An epoch is one pass over the unlabeled set (over the labeled set when there is none)."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    if n_unlabeled and config.batch_unlabeled:
        return math.ceil(n_unlabeled / config.batch_unlabeled)
    return math.ceil(config.n_labeled / config.batch_labeled)


def _index_stream(n: int, total: int, gen: torch.Generator) -> Tensor:
    """``total`` indices into range(n): whole random permutations back to back."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    reps = math.ceil(total / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total]


@dataclass
class EpochReport:
    epoch: int  # 1-based: the number of epochs finished
    metrics: dict[str, float]
    checkpoint: bytes


def lr_factor(config: JobConfig, n_steps: int) -> Callable[[int], float]:
    """Step -> multiplier of ``config.lr``: linear warm-up over ``lr_warmup`` epochs, times the
    decay (cosine to 0 over the run, or a step schedule of factors by epoch)."""
    total = n_steps * config.epochs
    warm = config.lr_warmup * n_steps
    decay = config.lr_decay
    step_factor = None if isinstance(decay, str) else make_schedule(decay)

    def factor(s: int) -> float:
        f = min(1.0, (s + 1) / warm) if warm else 1.0
        if decay == "cosine":
            f *= 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        elif step_factor is not None:
            f *= step_factor(s / n_steps)
        return f

    return factor


class _State:
    """Everything a checkpoint must carry to continue the job bit for bit."""

    def __init__(self, config: JobConfig, model: nn.Module, device: torch.device, n_steps: int) -> None:
        self.model = model
        self.device = device
        self.opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(config, n_steps))
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.epoch = 0  # epochs finished
        self.step = 0  # steps finished within the current epoch
        self.lab_order = torch.zeros(0, dtype=torch.long)
        self.unl_order = torch.zeros(0, dtype=torch.long)
        self.sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device)
        self.seconds = 0.0  # training wall time of the current epoch before an interruption
        self.collapsed_epochs = 0  # consecutive epochs that ended collapsed
        self.weights = Weights(config.alpha, config.beta)

    def to_bytes(self) -> bytes:
        rng = {"cpu": torch.get_rng_state()}
        # Only this job's device: the job may resume on a machine with another number of GPUs.
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        blob = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "lab_order": self.lab_order,
            "unl_order": self.unl_order,
            "sums": self.sums.cpu(),
            "seconds": self.seconds,
            "collapsed_epochs": self.collapsed_epochs,
            "weights": self.weights.state_dict(),
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        return buf.getvalue()

    def load(self, raw: bytes, device: torch.device) -> None:
        blob = _read_checkpoint(raw, device)
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        self.gen.set_state(blob["gen"].cpu())
        torch.set_rng_state(blob["rng"]["cpu"].cpu())
        if "cuda" in blob["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(blob["rng"]["cuda"].cpu(), device)
        self.epoch, self.step = int(blob["epoch"]), int(blob["step"])
        self.lab_order, self.unl_order = blob["lab_order"].cpu(), blob["unl_order"].cpu()
        self.sums = blob["sums"].to(device)
        self.seconds = float(blob["seconds"])
        self.collapsed_epochs = int(blob.get("collapsed_epochs", 0))
        if "weights" in blob:
            self.weights.load_state_dict(blob["weights"])


def _read_checkpoint(raw: bytes, device: str | torch.device) -> dict[str, Any]:
    try:
        blob = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except Exception as exc:  # damaged bytes surface as pickle, zip, EOF or index errors
        raise JobError(f"the stored checkpoint is damaged and cannot be read ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or "model" not in blob:
        raise JobError("the stored checkpoint is damaged: it holds no model")
    return blob


def load_model(config: JobConfig, checkpoint: bytes, device: str | torch.device = "cpu") -> nn.Module:
    """The trained network stored in a checkpoint, in eval mode."""
    info = datasets.info(config.dataset, root=config.data_root, **config.data_params)
    model = models.build(config.topology, info.input_shape, info.num_classes, init=config.init)
    model.load_state_dict(_read_checkpoint(checkpoint, device)["model"])
    return model.to(device).eval()


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x_lab: Tensor,
    y_lab: Tensor,
    x_unl: Tensor,
    *,
    alpha: float,
    beta: float,
    config: JobConfig,
    autocast: Callable[[], Any],
    weights: Optional[Weights] = None,
    ahead: Optional[tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """One optimiser step on a labeled and an unlabeled batch; returns the loss terms
    ``LOSS_TERMS`` as a float64 tensor on the device, without waiting for it. With learned
    ``weights``, the step also moves them by the look-ahead on the labeled batch ``ahead``."""
    with autocast():
        terms = ssl_loss(
            model,
            x_lab,
            y_lab,
            x_unl,
            alpha=alpha,
            beta=beta,
            layer_weights=config.layer_weights,
            distance=config.distance,
            weighting=config.weighting,
            entropy_form=config.entropy,
        )
    opt.zero_grad(set_to_none=True)
    if weights is not None and weights.any_learned and ahead is not None:
        learned_step(model, terms, weights, alpha, beta, opt.param_groups[0]["lr"], *ahead)
    else:
        terms.total.backward()
    opt.step()
    return torch.stack([terms.total, terms.ce, terms.recon, terms.entropy]).detach().double()


OnEpoch = Callable[[EpochReport], None]
OnStep = Callable[[int, int], None]


def train(
    config: JobConfig,
    *,
    device: str | torch.device | None = None,
    checkpoint: Optional[bytes] = None,
    on_epoch: Optional[OnEpoch] = None,
    on_step: Optional[OnStep] = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_prepared: Optional[Callable[[Prepared], None]] = None,
) -> tuple[dict[str, float], Optional[bytes]]:
    """Train ``config`` from scratch or from ``checkpoint``.

    Returns ``(final metrics, None)`` when every epoch ran, or ``(metrics so far, checkpoint)``
    when ``should_stop()`` turned true between two steps: the checkpoint then holds the
    epoch in progress, so nothing is recomputed on resume.
    """
    dev = resolve_device(device or config.device) if not isinstance(device, torch.device) else device
    if dev.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(config.seed)
    prep = prepare(config, dev)
    if on_prepared:
        on_prepared(prep)
    model = models.build(config.topology, prep.info.input_shape, prep.info.num_classes, init=config.init).to(dev)
    n_steps = steps_per_epoch(config, len(prep.x_unl))
    state = _State(config, model, dev, n_steps)
    if checkpoint is not None:
        state.load(checkpoint, dev)
    use_bf16 = config.precision == "bf16" and dev.type == "cuda"

    def autocast() -> Any:
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)

    bl = min(config.batch_labeled, len(prep.x_lab))
    bu = config.batch_unlabeled
    last: dict[str, float] = {}
    model.train()
    patience = config.collapse_patience
    while state.epoch < config.epochs and not (patience and state.collapsed_epochs >= patience):
        # Between epochs the stop is checked before the next epoch's batch order is drawn: a
        # checkpoint at step 0 must not hold a generator already advanced past that draw.
        if state.step == 0 and should_stop():
            return last, state.to_bytes()
        if state.step == 0:
            state.lab_order = _index_stream(len(prep.x_lab), n_steps * bl, state.gen)
            state.unl_order = _index_stream(len(prep.x_unl), n_steps * bu, state.gen)
            state.sums.zero_()
            state.seconds = 0.0
        started = time.perf_counter()
        history = []
        while state.step < n_steps:
            if state.step > 0 and should_stop():  # step 0: checked above, before the draw
                state.seconds += time.perf_counter() - started
                return last, state.to_bytes()
            s = state.step
            t = state.epoch + (s / n_steps if config.schedule_per == "step" else 0.0)
            alpha, beta = state.weights.at(t)
            li = state.lab_order[s * bl : (s + 1) * bl].to(dev)
            ui = state.unl_order[s * bu : (s + 1) * bu].to(dev)
            # The look-ahead scores the step on the next labeled batch, not the one it trained on.
            ai = state.lab_order[(s + 1) % n_steps * bl : ((s + 1) % n_steps + 1) * bl].to(dev)
            values = train_step(
                model,
                state.opt,
                prep.x_lab[li],
                prep.y_lab[li],
                prep.x_unl[ui],
                alpha=alpha,
                beta=beta,
                config=config,
                autocast=autocast,
                weights=state.weights,
                ahead=(prep.x_lab[ai], prep.y_lab[ai]) if state.weights.any_learned else None,
            )
            state.sched.step()
            history.append(values)
            state.sums += values
            state.step += 1
            if len(history) == CHECK_EVERY or state.step == n_steps:
                _check_finite(history, state.epoch + 1, state.step - len(history) + 1)
                history = []
            if on_step:
                on_step(state.step, n_steps)
        seconds = state.seconds + time.perf_counter() - started
        means = (state.sums / n_steps).tolist()
        # With alpha 1 the loss has no reconstruction or entropy term: absent, not a flat 0.
        absent = ("recon", "entropy") if config.alpha == 1.0 else ()
        absent += ("ce",) if config.n_labeled == 0 else ()  # no labels, no cross-entropy
        last = {name: v for name, v in zip(LOSS_TERMS, means) if name not in absent}
        last.update(evaluate(model, prep, config.distance, autocast))
        last["lr"] = state.opt.param_groups[0]["lr"]
        if state.weights.any_learned:
            last["alpha"], last["beta"] = state.weights.at(state.epoch + 1)
        last["wall_s"] = seconds
        state.epoch += 1
        state.step = 0
        state.collapsed_epochs = state.collapsed_epochs + 1 if last.get("collapsed") else 0
        if patience and state.collapsed_epochs >= patience and state.epoch < config.epochs:
            last["stopped_collapsed"] = 1.0
        if on_epoch:
            on_epoch(EpochReport(state.epoch, dict(last), state.to_bytes()))
    return last, None


def _check_finite(history: list[Tensor], epoch: int, first_step: int) -> None:
    losses = torch.stack(history)[:, 0]
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = first_step + int(bad[0, 0])
        value = losses[int(bad[0, 0])].item()
        raise JobError(f"loss became {value} at epoch {epoch}, step {step}")
