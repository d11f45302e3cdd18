"""The epoch loop of one run: `Run` fits, evaluates, checkpoints and gives the final result.

A run is built by `gloss_core.training.build.build_run`. Hooks stay outside: per-epoch metrics and
a checkpoint folder go to an injected `report(metrics, checkpoint_dir)`. Host syncs happen once per
epoch (the loss total), at the log point.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gloss_core.config import Report, TrainConfig, gloss_batch_problem
from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.graph.propagation import gaussian_affinity
from gloss_core.graph.sigma import BatchSqrtSigma, FixedSigma
from gloss_core.losses.gloss import GLoss
from gloss_core.timing import PhaseTimer
from gloss_core.training.checkpoint import BestWeights, CheckpointError, rng_state, save_checkpoint, set_rng_state
from gloss_core.training.metrics import classification_metrics, silhouettes
from gloss_core.training.probe import train_linear_probe

ADJACENCY_BATCH = 64  # rows of the fixed training batch whose adjacency is saved per epoch
SHM = "/dev/shm"


def checkpoint_scratch(weight_bytes: int) -> str | None:
    """Where each epoch's checkpoint is written before `report` hands it on (Ray Tune copies it to
    storage): memory (`/dev/shm`) when it has room for four checkpoints, so only that copy touches
    the disk; else the default temporary folder. `GLOSS_CHECKPOINT_SCRATCH` overrides both."""
    chosen = os.environ.get("GLOSS_CHECKPOINT_SCRATCH")
    if chosen:
        return chosen
    try:
        if shutil.disk_usage(SHM).free > 4 * 3.2 * weight_bytes:
            return SHM
    except OSError:
        pass
    return None


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


# seconds a checkpoint takes per byte of model weights: measured at each checkpoint of this process;
# until then, a state of 3x the model written and copied once each at 1 GB/s
CHECKPOINT_COST = {"s_per_model_byte": 3 * 2 / 1e9}


class Run:
    """One run's model, data, loss, optimiser and state. Built by `build_run`; see its order."""

    def __init__(self, config: TrainConfig, model, data, device: torch.device, autocast: torch.dtype | None,
                 class_weights, loss_fn, optimizer, scheduler, best_weights: BestWeights | None = None):
        self.config, self.model, self.data, self.device, self.autocast = config, model, data, device, autocast
        self.class_weights, self.loss_fn, self.optimizer, self.scheduler = class_weights, loss_fn, optimizer, scheduler
        self.best_weights = best_weights  # where the best epoch's weights wait once it is not the current one
        self.stored_best_epoch = 0  # the epoch whose weights that file holds
        self.probe_head = None  # standalone: the linear probe, the head an exported model carries
        self.model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.scratch = checkpoint_scratch(self.model_bytes)
        self.standalone = config.protocol == "standalone"
        self.timer = PhaseTimer(device, enabled=config.timing)
        if isinstance(loss_fn.aux_loss, GLoss):
            loss_fn.aux_loss.timer = self.timer
        self.epoch = 0
        self.best = {"best_epoch": 0, "selection": -math.inf}
        self.best_state = None
        self.history: list[dict] = []
        self.unsaved_since = time.perf_counter()  # when the work a crash would lose began
        # what the next checkpoint will take (write and hand-over): this process's last measured
        # cost per model byte (a trial process serves many trials), else a prior estimate
        self.checkpoint_cost_s = CHECKPOINT_COST["s_per_model_byte"] * self.model_bytes

    @property
    def sigma_value(self) -> float | None:
        """G-Loss's fixed kernel width (already scaled), or None (another loss, or a per-batch rule)."""
        aux = self.loss_fn.aux_loss
        return aux.sigma.value if isinstance(aux, GLoss) and isinstance(aux.sigma, FixedSigma) else None

    # ---- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything an exact resume needs. The best epoch's weights are left out while they are
        the current ones; once behind, they go to `best_weights` (written when they change), or
        into the state itself (`best_state`) for a run without that file."""
        best_epoch = self.best["best_epoch"]
        behind = 0 < best_epoch < self.epoch
        if behind and self.best_weights is not None and self.stored_best_epoch != best_epoch:
            self.best_weights.save(self.best_state, best_epoch)
            self.stored_best_epoch = best_epoch
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loss": self.loss_fn.state_dict(), "rng": rng_state(),
            "epoch": self.epoch, "best": dict(self.best), "history": self.history, "sigma_value": self.sigma_value,
            "best_state": self.best_state if behind and self.best_weights is None else None,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        set_rng_state(state["rng"])
        self.epoch, self.best, self.history = state["epoch"], dict(state["best"]), list(state["history"])
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
            self.stored_best_epoch = best_epoch

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
        while self.epoch < config.epochs:
            if config.patience and self.epoch - self.best["best_epoch"] >= config.patience:
                break
            self.epoch += 1
            metrics = {"epoch": self.epoch, **self.train_epoch()}
            val, _, _ = self.evaluate(self.data.val)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            selection = val["macro_silhouette"] if self.standalone else val["macro_f1"]
            selection = -math.inf if math.isnan(selection) else selection
            if selection > self.best["selection"]:
                self.best = {"best_epoch": self.epoch, "selection": selection}
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            metrics["best_epoch"] = self.best["best_epoch"]
            patience_over = bool(config.patience) and self.epoch - self.best["best_epoch"] >= config.patience
            metrics["last_epoch"] = self.epoch == config.epochs or patience_over
            self.history.append(metrics)
            self.save_adjacency()
            if report is not None:
                self._report(report, metrics)

    def _checkpoint_due(self, metrics: dict) -> bool:
        """Every `checkpoint_every` epochs; with a `checkpoint_budget` b, only while the time spent
        on checkpoints stays within b of the training time (the cost: the last checkpoint's in
        this process, per model byte; before any, 1 GB/s), and never at the last epoch, after
        which the run ends and nothing is left to resume."""
        config = self.config
        if not config.checkpoint_every or self.epoch % config.checkpoint_every:
            return False
        if config.checkpoint_budget is None:
            return True
        if metrics.get("last_epoch"):
            return False
        unsaved = time.perf_counter() - self.unsaved_since
        return unsaved * config.checkpoint_budget >= self.checkpoint_cost_s * (1 - config.checkpoint_budget)

    def _report(self, report: Report, metrics: dict) -> None:
        if self._checkpoint_due(metrics):
            with tempfile.TemporaryDirectory(prefix="gloss-ckpt-", dir=self.scratch) as folder:
                started = time.perf_counter()
                save_checkpoint(folder, self.state())
                written = time.perf_counter()
                report({**metrics, "checkpoint_write_s": written - started}, folder)
                done = time.perf_counter()
            self.checkpoint_cost_s = done - started  # the write, and the report's hand-over of the folder
            CHECKPOINT_COST["s_per_model_byte"] = self.checkpoint_cost_s / max(self.model_bytes, 1)
            self.unsaved_since = done
        else:
            report(dict(metrics), None)

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
    def result(self) -> dict:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        best = next((h for h in self.history if h["epoch"] == self.best["best_epoch"]), {})
        test, test_emb, test_labels = self.evaluate(self.data.test)
        out = {
            "best_epoch": self.best["best_epoch"],
            "epochs_run": self.epoch,
            **{k: best[k] for k in best if k.startswith("val_")},
            **{f"test_{k}": v for k, v in test.items()},
            "time_per_epoch_s": float(np.mean([h["epoch_time_s"] for h in self.history])) if self.history else 0.0,
            "timing_per_epoch_s": _mean_timing(self.history),
            "sigma": self.sigma_value,
            "history": self.history,
        }
        if self.standalone:
            out.update(self.probe(test_emb, test_labels))
        if self.config.artifacts_dir:
            folder = Path(self.config.artifacts_dir)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "test_embeddings.npy", test_emb.numpy())
            np.save(folder / "test_labels.npy", test_labels.numpy())
        return out

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


def _mean_timing(history: list[dict]) -> dict[str, float]:
    keys = [k for k in (history[0] if history else {}) if k.startswith("time_")]
    return {k[len("time_"):-len("_s")]: float(np.mean([h[k] for h in history])) for k in keys}
