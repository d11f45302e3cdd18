"""The epoch loop of one run: `Run` fits, evaluates, checkpoints and gives the final result.

A run is built by `gloss_core.training.build.build_run`. Hooks stay outside: each epoch's typed
`EpochReport` (`gloss_core.report`) and a checkpoint folder go to an injected
`report(epoch_report, checkpoint_dir)`; the run ends with a `RunResult`. Host syncs happen once per
epoch (the loss total), at the log point.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gloss_core.config import Report, TrainConfig, gloss_batch_problem
from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.graph.propagation import gaussian_affinity
from gloss_core.graph.sigma import BatchSqrtSigma, FixedSigma
from gloss_core.losses.gloss import GLoss
from gloss_core.report import EpochReport, RunResult, better
from gloss_core.timing import PhaseTimer
from gloss_core.training.budget import CheckpointBudget, checkpoint_scratch
from gloss_core.training.checkpoint import BestWeights, CheckpointError, rng_state, save_checkpoint, set_rng_state
from gloss_core.training.gpu import peak_gpu_memory_mb
from gloss_core.training.metrics import classification_metrics, silhouettes
from gloss_core.training.probe import train_linear_probe

ADJACENCY_BATCH = 64  # rows of the fixed training batch whose adjacency is saved per epoch


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


@torch.no_grad()
def embed(model, batches, device: torch.device, autocast: torch.dtype | None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, embeddings (float32, on the CPU) and labels of every batch, in eval mode."""
    model.eval()
    logits, embeddings, labels = [], [], []
    for inputs, y in batches:
        with autocast_context(device, autocast):
            out, emb = model(**{k: v.to(device) for k, v in inputs.items()})
        logits.append(out.float().cpu())
        embeddings.append(emb.float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(embeddings), torch.cat(labels)


class Run:
    """One run's model, data, loss, optimiser and state. Built by `build_run`; see its order."""

    def __init__(self, config: TrainConfig, model, data, device: torch.device, autocast: torch.dtype | None,
                 class_weights, loss_fn, optimizer, scheduler, best_weights: BestWeights | None = None):
        self.config, self.model, self.data, self.device, self.autocast = config, model, data, device, autocast
        self.class_weights, self.loss_fn, self.optimizer, self.scheduler = class_weights, loss_fn, optimizer, scheduler
        self.best_weights = best_weights  # where the best epoch's weights wait once it is not the current one
        self.stored_best_epoch = 0  # the latest epoch whose weights this run wrote there (or restored)
        self.handed_best_epoch = 0  # the epoch file the last checkpoint handed over names (0: none)
        self.probe_head = None  # standalone: the linear probe, the head an exported model carries
        self.model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.scratch = checkpoint_scratch(self.model_bytes)
        self.budget = CheckpointBudget(config.checkpoint_every, config.checkpoint_budget, self.model_bytes)
        self.standalone = config.protocol == "standalone"
        self.timer = PhaseTimer(device, enabled=config.timing)
        if isinstance(loss_fn.aux_loss, GLoss):
            loss_fn.aux_loss.timer = self.timer
        self.epoch = 0
        self.best = {"best_epoch": 0, "selection": math.nan}  # the best epoch so far and its selection value
        self.best_state = None
        self.history: list[EpochReport] = []

    @property
    def sigma_value(self) -> float | None:
        """G-Loss's fixed kernel width (already scaled), or None (another loss, or a per-batch rule)."""
        aux = self.loss_fn.aux_loss
        return aux.sigma.value if isinstance(aux, GLoss) and isinstance(aux.sigma, FixedSigma) else None

    # ---- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything an exact resume needs: the next checkpoint. The best epoch's weights are left
        out while they are the current ones; once behind, they go to `best_weights` (a file per
        epoch, written when the best changes), or into the state itself (`best_state`) for a run
        without that location. The epoch files neither this checkpoint nor the one handed over
        before it names go (the order is in `gloss_core.training.checkpoint`'s docstring)."""
        best_epoch = self.best["best_epoch"]
        behind = 0 < best_epoch < self.epoch
        if self.best_weights is not None:
            named = best_epoch if behind else 0
            if named and self.stored_best_epoch != named:
                self.best_weights.save(self.best_state, named)
                self.stored_best_epoch = named
            self.best_weights.keep({self.handed_best_epoch, named} - {0})
            self.handed_best_epoch = named  # handed over when the next checkpoint is made
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loss": self.loss_fn.state_dict(), "rng": rng_state(),
            "epoch": self.epoch, "best": dict(self.best), "history": [r.state() for r in self.history],
            "sigma_value": self.sigma_value,
            "best_state": self.best_state if behind and self.best_weights is None else None,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        set_rng_state(state["rng"])
        self.epoch, self.best = state["epoch"], dict(state["best"])
        self.history = [EpochReport.from_state(r) for r in state["history"]]
        best_epoch = self.best["best_epoch"]
        if state.get("best_state") is not None:
            self.best_state = state["best_state"]
        elif best_epoch == self.epoch:
            self.best_state = state["model"]  # the checkpoint's own weights (the model holds copies)
        elif best_epoch > 0:
            if self.best_weights is None:
                raise CheckpointError(f"the checkpoint's best epoch {best_epoch} is in a best-weights file; "
                                      "resume with the same checkpoint folder (or best-weights location)")
            self.best_state = self.best_weights.load(best_epoch)
            self.stored_best_epoch = self.handed_best_epoch = best_epoch

    # ---- evaluation ---------------------------------------------------------------------------
    def embed(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return embed(self.model, batches, self.device, self.autocast)

    def evaluate(self, batches) -> tuple[dict, torch.Tensor, torch.Tensor]:
        logits, emb, labels = self.embed(batches)
        if not bool(torch.isfinite(emb).all()):
            raise NonFiniteEmbeddingsError(f"evaluation embeddings hold NaN/inf after epoch {self.epoch}; "
                                           "training diverged (learning rate too high?)")
        metrics = silhouettes(emb, labels)
        if not self.standalone:
            metrics.update(classification_metrics(logits, labels))
        return metrics, emb, labels

    # ---- training -----------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        self.model.train()
        self.data.train.epoch = self.epoch  # data order is a function of (seed, epoch)
        timer, clip = self.timer, self.config.clip()
        total = torch.zeros((), device=self.device)
        start = time.perf_counter()
        zero_gloss = 0  # batches too small for G-Loss to hide and keep a label (its term is 0 there)
        iterator = iter(self.data.train)
        while True:
            with timer("data"):
                item = next(iterator, None)
                if item is None:
                    break
                inputs, labels = {k: v.to(self.device) for k, v in item[0].items()}, item[1].to(self.device)
                if self.config.loss == "gloss" and gloss_batch_problem(len(labels), self.config.gamma):
                    zero_gloss += 1
            with autocast_context(self.device, self.autocast):
                with timer("forward"):
                    logits, embeddings = self.model(**inputs)
                with timer("loss"):
                    loss = self.loss_fn(logits, embeddings, labels)
            with timer("backward"):
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            with timer("optimizer"):
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.optimizer.step()
                self.scheduler.step()
            total += loss.detach()
        train_loss = float(total) / len(self.data.train)  # the epoch's one host sync
        return {"train_loss": train_loss, "epoch_time_s": time.perf_counter() - start,
                **({"gloss_zero_batches": zero_gloss} if self.config.loss == "gloss" else {}),
                **{f"time_{k}_s": v for k, v in timer.reset().items()}}

    def fit(self, report: Report | None = None) -> None:
        config = self.config
        selection, mode = config.selection(), config.selection_mode
        while self.epoch < config.epochs and self.stop_reason() is None:
            self.epoch += 1
            metrics = self.train_epoch()
            val, _, _ = self.evaluate(self.data.val)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            value = metrics[selection]
            if better(value, self.best["selection"] if self.best["best_epoch"] else None, mode):
                self.best = {"best_epoch": self.epoch, "selection": value}
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            stop = self.stop_reason()
            epoch = EpochReport(self.epoch, metrics, self.best["best_epoch"], self.score, last=stop is not None,
                                stop=stop, device=str(self.device),
                                peak_gpu_memory_mb=peak_gpu_memory_mb(self.device))
            self.history.append(epoch)
            self.save_adjacency()
            if report is not None:
                self._report(report, epoch)

    @property
    def score(self) -> float:
        """The selection metric at the best epoch so far (NaN before any finite one)."""
        return self.best["selection"] if self.best["best_epoch"] else math.nan

    def stop_reason(self) -> str | None:
        """Why training ends after the current epoch: "early_stop" (no better epoch for `patience`
        epochs), "budget" (every epoch ran), or None (it goes on)."""
        config = self.config
        if self.epoch and config.patience and self.epoch - self.best["best_epoch"] >= config.patience:
            return "early_stop"
        return "budget" if self.epoch >= config.epochs else None

    def _report(self, report: Report, epoch: EpochReport) -> None:
        if self.budget.due(self.epoch, epoch.last):
            with tempfile.TemporaryDirectory(prefix="gloss-ckpt-", dir=self.scratch) as folder:
                started = time.perf_counter()
                save_checkpoint(folder, self.state())
                written = time.perf_counter()
                report(replace(epoch, checkpoint_write_s=written - started), folder)
                done = time.perf_counter()
            self.budget.spent(started, done)
        else:
            report(epoch, None)

    # ---- artifacts ----------------------------------------------------------------------------
    def save_adjacency(self) -> None:
        """Affinity matrix of one fixed training batch (first rows, ordered by label) this epoch."""
        if not self.config.artifacts_dir:
            return
        folder = Path(self.config.artifacts_dir)
        folder.mkdir(parents=True, exist_ok=True)
        batches = self.data.eval_train
        rows = sorted(range(min(ADJACENCY_BATCH, len(batches.labels))), key=lambda i: int(batches.labels[i]))
        inputs, labels = batches.collate(rows)
        with torch.no_grad():
            self.model.eval()
            _, emb = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        sigma = self.sigma_value if self.sigma_value is not None else BatchSqrtSigma()(emb)
        W = gaussian_affinity(emb.float(), sigma).cpu().numpy()
        np.save(folder / f"adjacency_epoch{self.epoch:03d}.npy", W)
        np.save(folder / "adjacency_labels.npy", labels.numpy())

    # ---- final evaluation -----------------------------------------------------------------------
    def result(self) -> RunResult:
        """Test metrics from the best epoch's weights (restored), with that epoch's validation metrics."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        best = next((r for r in self.history if r.epoch == self.best["best_epoch"]), None)
        validation = {k: v for k, v in (best.metrics if best else {}).items() if k.startswith("val_")}
        test, test_emb, test_labels = self.evaluate(self.data.test)
        result = RunResult(
            best_epoch=self.best["best_epoch"], score=self.score, epochs_run=self.epoch,
            stop=self.stop_reason() or "budget", validation=validation, test={f"test_{k}": v for k, v in test.items()},
            time_per_epoch_s=float(np.mean([r.metrics["epoch_time_s"] for r in self.history])) if self.history else 0.0,
            timing_per_epoch_s=_mean_timing(self.history), sigma=self.sigma_value, history=list(self.history),
            device=str(self.device),
        )
        if self.standalone:
            probe = self.probe(test_emb, test_labels)
            result.probe = {k: probe.pop(k) for k in list(probe) if k.startswith("probe_")}
            result.validation.update({k: v for k, v in probe.items() if k.startswith("val_")})
            result.test.update({k: v for k, v in probe.items() if k.startswith("test_")})
        if self.config.artifacts_dir:
            folder = Path(self.config.artifacts_dir)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "test_embeddings.npy", test_emb.numpy())
            np.save(folder / "test_labels.npy", test_labels.numpy())
        return result

    def probe(self, test_emb, test_labels) -> dict:
        config = self.config
        _, train_emb, train_labels = self.embed(self.data.eval_train)
        _, val_emb, val_labels = self.embed(self.data.val)
        self.probe_head, info = train_linear_probe(
            train_emb, train_labels, val_emb, val_labels, self.data.splits.num_classes, epochs=config.probe_epochs,
            patience=config.probe_patience, lr=config.probe_lr, seed=config.seeds()["init"],
            class_weights=self.class_weights,
        )
        with torch.no_grad():
            val = classification_metrics(self.probe_head(val_emb), val_labels)
            test = classification_metrics(self.probe_head(test_emb), test_labels)
        return {**info, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]}


def _mean_timing(history: list[EpochReport]) -> dict[str, float]:
    keys = [k for k in (history[0].metrics if history else {}) if k.startswith("time_")]
    return {k[len("time_"):-len("_s")]: float(np.mean([r.metrics[k] for r in history])) for k in keys}
