"""Train the toy StyleGAN2 on scenes drawn on the fly: resumable, in time-boxed slices, on CPU or CUDA.

The generator is our own :class:`~gan_rewrite.models.stylegan2.StyleGAN2Generator`, so the model users
rewrite here takes the same code path as a StyleGAN2 from the Hub. The recipe is StyleGAN2's, kept small:
non-saturating logistic loss, lazy R1 on real images, style mixing, an exponential moving average of the
generator (the model that is shipped), Adam with β₁ = 0. There is no dataset: every batch is freshly drawn
by :func:`~gan_rewrite.toyworld.render.random_scenes`, so the world is the data.

A run trains for ``minutes`` (or ``steps``) and writes a checkpoint folder: the three networks as
safetensors, the optimisers' state (``torch.save`` of tensors only, read back with ``weights_only=True``),
and ``state.json``. Running again with the same folder resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_text_atomic
from ..errors import GanRewriteError
from ..models.base import pick_device
from ..models.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from .discriminator import Discriminator
from .render import N_UNIFORMS, render_antialiased

logger = logging.getLogger(__name__)

TOY_CHANNELS = {"4": 256, "8": 256, "16": 128, "32": 128, "64": 64}


@dataclass
class TrainConfig:
    """Hyper-parameters of a toy-world training run (stored in ``state.json``; a resumed run keeps them)."""

    resolution: int = 64
    z_dim: int = 256
    n_mlp: int = 4
    channels: dict[str, int] = field(default_factory=lambda: dict(TOY_CHANNELS))
    batch_size: int = 32
    lr: float = 0.0025
    r1_gamma: float = 1.0
    r1_every: int = 16
    mixing: float = 0.5
    ema_kimg: float = 10.0
    seed: int = 0

    def generator_config(self) -> StyleGAN2Config:
        channels = {k: v for k, v in self.channels.items() if int(k) <= self.resolution}
        return StyleGAN2Config(resolution=self.resolution, z_dim=self.z_dim, n_mlp=self.n_mlp, channels=channels)


class TrainingError(GanRewriteError, ValueError):
    """A training request that cannot run (bad folder, mismatched checkpoint)."""


@dataclass
class Trainer:
    """The three networks, their optimisers and the step counter; :meth:`train` runs a slice."""

    config: TrainConfig
    device: torch.device
    G: StyleGAN2Generator
    G_ema: StyleGAN2Generator
    D: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    step: int = 0
    seconds: float = 0.0
    images: int = 0

    @classmethod
    def create(cls, config: TrainConfig, device: str | torch.device | None = None) -> Trainer:
        device = pick_device(device)
        torch.manual_seed(config.seed)
        G = StyleGAN2Generator(config.generator_config()).to(device)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        channels = {int(k): v for k, v in config.channels.items()}
        D = Discriminator(config.resolution, channels).to(device)
        # Lazy R1 runs every `r1_every` steps, so D's Adam is rescaled as in StyleGAN2.
        ratio = config.r1_every / (config.r1_every + 1)
        opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=(0.0, 0.99))
        opt_d = torch.optim.Adam(D.parameters(), lr=config.lr * ratio, betas=(0.0, 0.99**ratio))
        return cls(config, device, G, G_ema, D, opt_g, opt_d)

    # ----- checkpoints ------------------------------------------------------------------------
    @classmethod
    def resume(cls, folder: str | Path, device: str | torch.device | None = None, *,
               batch_size: int | None = None) -> Trainer:
        """Load a checkpoint folder written by :meth:`save`; the optimisers' state is optional.

        ``batch_size`` may change between slices (a GPU slice at 64, a CPU slice at 16): the step count
        keeps counting steps, ``state.json`` counts the images.
        """
        folder = Path(folder)
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            config = TrainConfig(**state["config"])
            if batch_size:
                config.batch_size = batch_size
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise TrainingError(f"{folder} is not a toy-world training checkpoint ({exc}); start a new run "
                                f"in an empty folder.") from exc
        trainer = cls.create(config, device)
        for name in ("G", "G_ema", "D"):
            weights = load_file(folder / f"{name}.safetensors", device=str(trainer.device))
            getattr(trainer, name).load_state_dict({k: v.float() for k, v in weights.items()})
        optimisers = folder / "optimizers.pt"
        if optimisers.is_file():
            saved = torch.load(optimisers, map_location=trainer.device, weights_only=True)
            trainer.opt_g.load_state_dict(saved["G"])
            trainer.opt_d.load_state_dict(saved["D"])
        else:
            logger.info("no optimizers.pt in %s: Adam restarts from zero moments", folder)
        trainer.step, trainer.seconds = int(state["step"]), float(state.get("seconds", 0.0))
        trainer.images = int(state.get("images", trainer.step * config.batch_size))
        return trainer

    def save(self, folder: str | Path, *, optimizers: bool = True, half_discriminator: bool = False) -> None:
        """Write the checkpoint; ``half_discriminator`` stores D in float16 (a smaller file to move)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("G", "G_ema", "D"):
            weights = {k: v.detach().contiguous().cpu() for k, v in getattr(self, name).state_dict().items()}
            if name == "D" and half_discriminator:
                weights = {k: v.half() for k, v in weights.items()}
            with atomic_path(folder / f"{name}.safetensors") as tmp:
                save_file(weights, str(tmp))
        if optimizers:
            with atomic_path(folder / "optimizers.pt") as tmp:
                torch.save({"G": self.opt_g.state_dict(), "D": self.opt_d.state_dict()}, tmp)
        state = {"step": self.step, "seconds": self.seconds, "images": self.images,
                 "config": asdict(self.config)}
        write_text_atomic(folder / "state.json", json.dumps(state, indent=2))

    # ----- training ---------------------------------------------------------------------------
    def _latents(self, n: int) -> Tensor:
        """``w+`` for ``n`` images, two styles mixed at a random layer with probability ``mixing``."""
        z = torch.randn(2, n, self.config.z_dim, device=self.device)
        w = self.G.mapping(z.flatten(0, 1)).view(2, n, 1, -1)
        n_latent = self.G.config.n_latent
        cut = torch.randint(1, n_latent, (n, 1, 1), device=self.device)
        cut = torch.where(torch.rand(n, 1, 1, device=self.device) < self.config.mixing, cut, n_latent)
        index = torch.arange(n_latent, device=self.device).view(1, -1, 1)
        return torch.where(index < cut, w[0], w[1])  # (N, n_latent, D)

    def _fake(self, n: int) -> Tensor:
        noise = [torch.randn(n, 1, s, s, device=self.device) for s in self.G.noise_sizes()]
        return self.G.synthesis(self._latents(n), noise=noise)

    def train_step(self) -> dict[str, float]:
        """One D step (with R1 every ``r1_every`` steps) and one G step; returns the losses."""
        cfg, n = self.config, self.config.batch_size
        real, _ = render_antialiased(torch.rand(n, N_UNIFORMS, device=self.device), size=cfg.resolution)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self._fake(n)
        fake_logits, real_logits = self.D(fake), self.D(real)
        loss_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        r1 = torch.zeros(())
        if self.step % cfg.r1_every == 0:
            real = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(real).sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            self.opt_d.zero_grad(set_to_none=True)
            (cfg.r1_gamma / 2 * r1 * cfg.r1_every).backward()
            self.opt_d.step()
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        loss_g = F.softplus(-self.D(self._fake(n))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self._update_ema()
        self.step += 1
        self.images += n
        return {"d": loss_d.item(), "g": loss_g.item(), "r1": r1.item(), "real": real_logits.mean().item(),
                "fake": fake_logits.mean().item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = 0.5 ** (self.config.batch_size / (self.config.ema_kimg * 1000))
        for ema, live in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            ema.lerp_(live, 1 - beta)

    def train(self, *, minutes: float | None = None, steps: int | None = None, folder: str | Path | None = None,
              save_every_minutes: float = 10.0, save_optimizers: bool = True, progress: bool = True) -> None:
        """Train for ``minutes`` of wall time or ``steps`` more steps (whichever ends first), saving to ``folder``."""
        if minutes is None and steps is None:
            raise TrainingError("give `minutes` or `steps` to bound a training slice.")
        start = last_save = time.monotonic()
        goal = self.step + steps if steps is not None else math.inf
        bar = tqdm(total=None if steps is None else steps, disable=not progress, desc="train toyworld", unit="step")
        while self.step < goal and (minutes is None or time.monotonic() - start < minutes * 60):
            losses = self.train_step()
            bar.update(1)
            if self.step % 50 == 0:
                bar.set_postfix(losses)
            if self.step % 500 == 0:
                logger.info("step %d: %s", self.step, {k: round(v, 3) for k, v in losses.items()})
            if folder is not None and time.monotonic() - last_save > save_every_minutes * 60:
                self.seconds += time.monotonic() - last_save
                last_save = time.monotonic()
                self.save(folder, optimizers=save_optimizers)
        bar.close()
        self.seconds += time.monotonic() - last_save
        if folder is not None:
            self.save(folder, optimizers=save_optimizers)


def export_model(trainer: Trainer, out: str | Path) -> None:
    """Save the averaged generator as a model folder (config.json, model.safetensors, card)."""
    G = copy.deepcopy(trainer.G_ema).cpu()
    G.estimate_latent_avg(n=10_000)
    G.save_pretrained(out)
