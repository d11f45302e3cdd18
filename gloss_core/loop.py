"""The epoch loop behind `gloss_core.train.train`: one `Run` holds the model, optimiser and state.

Hooks stay outside: per-epoch metrics and a checkpoint folder go to the injected `report`.
`.item()`-style host syncs happen once per epoch (the loss total), at the log point.
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

from gloss_core.checkpoint import rng_state, save_checkpoint, set_rng_state
from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.components import autocast_dtype, balanced_weights, build_loss, make_scheduler
from gloss_core.graph import gaussian_affinity
from gloss_core.losses import GLoss
from gloss_core.metrics import classification_metrics, silhouettes
from gloss_core.probe import train_linear_probe
from gloss_core.sigma import BatchSqrtSigma, FixedSigma
from gloss_core.timing import PhaseTimer

ADJACENCY_BATCH = 64  # rows of the fixed training batch whose adjacency is saved per epoch


class Run:
    def __init__(self, config, model, splits, device, train_batches, val_batches, test_batches, eval_train):
        self.config, self.model, self.splits, self.device = config, model, splits, device
        self.train_batches, self.val_batches, self.test_batches = train_batches, val_batches, test_batches
        self._make_eval_train = eval_train  # builds unshuffled train batches, once, when first needed
        self._eval_train = None
        self.standalone = config.protocol == "standalone"
        self.weights = (balanced_weights(splits.train.labels, splits.num_classes).to(device)
                        if config.class_weights == "balanced" else None)
        dtype = autocast_dtype(config, device)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.timer = PhaseTimer(device, enabled=config.timing)
        params = [p for n, p in model.named_parameters() if not (self.standalone and n.startswith("head."))]
        optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = make_scheduler(config, self.optimizer, len(train_batches))
        self.epoch = 0
        self.best = {"best_epoch": 0, "selection": -math.inf}
        self.best_state = None
        self.history: list[dict] = []
        self.sigma_value: float | None = None
        self.loss_fn = None

    def eval_train(self):
        """Unshuffled train batches (sigma rules, adjacency artifacts, the linear probe)."""
        if self._eval_train is None:
            self._eval_train = self._make_eval_train()
        return self._eval_train

    # ---- set-up and checkpoints -------------------------------------------------------------
    def setup_loss(self, state: dict | None = None) -> None:
        """Build the loss; sigma by the SQRT / DICM rule comes from the encoder before fine-tuning
        (or from the checkpoint, on resume)."""
        config = self.config
        sigma_spec = config.sigma
        if state is not None and state.get("sigma_value") is not None:
            sigma_spec = float(state["sigma_value"])
        train_emb = None
        if config.loss == "gloss" and sigma_spec in ("sqrt", "dicm"):
            _, train_emb, _ = self.embed(self.eval_train())
        config_for_loss = config if sigma_spec == config.sigma else replace(config, sigma=sigma_spec)
        self.loss_fn = build_loss(config_for_loss, self.splits.num_classes, self.weights, train_emb,
                                  self.splits.train.labels).to(self.device)
        aux = self.loss_fn.aux_loss
        if isinstance(aux, GLoss):
            aux.timer = self.timer
            if isinstance(aux.sigma, FixedSigma):
                self.sigma_value = aux.sigma.value

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loss": self.loss_fn.state_dict(), "rng": rng_state(),
            "epoch": self.epoch, "best": dict(self.best), "best_state": self.best_state, "history": self.history,
            "sigma_value": self.sigma_value,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        set_rng_state(state["rng"])
        self.epoch, self.best, self.history = state["epoch"], dict(state["best"]), list(state["history"])
        self.best_state = state["best_state"]

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.model.eval()
        logits, embeddings, labels = [], [], []
        for inputs, y in batches:
            with self.autocast():
                out, emb = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            logits.append(out.float().cpu())
            embeddings.append(emb.float().cpu())
            labels.append(y)
        return torch.cat(logits), torch.cat(embeddings), torch.cat(labels)

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
        self.train_batches.epoch = self.epoch  # data order is a function of (seed, epoch)
        timer, clip = self.timer, self.config.clip()
        total = torch.zeros((), device=self.device)
        start = time.perf_counter()
        iterator = iter(self.train_batches)
        while True:
            with timer("data"):
                item = next(iterator, None)
                if item is None:
                    break
                inputs, labels = {k: v.to(self.device) for k, v in item[0].items()}, item[1].to(self.device)
            with self.autocast():
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
        train_loss = float(total) / len(self.train_batches)  # the epoch's one host sync
        return {"train_loss": train_loss, "epoch_time_s": time.perf_counter() - start,
                **{f"time_{k}_s": v for k, v in timer.reset().items()}}

    def fit(self, report=None) -> None:
        config = self.config
        while self.epoch < config.epochs:
            if config.patience and self.epoch - self.best["best_epoch"] >= config.patience:
                break
            self.epoch += 1
            metrics = {"epoch": self.epoch, **self.train_epoch()}
            val, _, _ = self.evaluate(self.val_batches)
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

    def _report(self, report, metrics: dict) -> None:
        every = self.config.checkpoint_every
        if every and self.epoch % every == 0:
            with tempfile.TemporaryDirectory(prefix="gloss-ckpt-") as folder:
                save_checkpoint(folder, self.state())
                report(dict(metrics), folder)
        else:
            report(dict(metrics), None)

    # ---- artifacts ----------------------------------------------------------------------------
    def save_adjacency(self) -> None:
        """Affinity matrix of one fixed training batch (first rows, ordered by label) this epoch."""
        if not self.config.artifacts_dir:
            return
        folder = Path(self.config.artifacts_dir)
        folder.mkdir(parents=True, exist_ok=True)
        batches = self.eval_train()
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
        test, test_emb, test_labels = self.evaluate(self.test_batches)
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
        _, train_emb, train_labels = self.embed(self.eval_train())
        _, val_emb, val_labels = self.embed(self.val_batches)
        head, info = train_linear_probe(
            train_emb, train_labels, val_emb, val_labels, self.splits.num_classes, epochs=config.probe_epochs,
            patience=config.probe_patience, lr=config.probe_lr, seed=config.seeds()["init"],
            class_weights=self.weights,
        )
        with torch.no_grad():
            val = classification_metrics(head(val_emb), val_labels)
            test = classification_metrics(head(test_emb), test_labels)
        return {**info, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]}


def _mean_timing(history: list[dict]) -> dict[str, float]:
    keys = [k for k in (history[0] if history else {}) if k.startswith("time_")]
    return {k[len("time_"):-len("_s")]: float(np.mean([h[k] for h in history])) for k in keys}
