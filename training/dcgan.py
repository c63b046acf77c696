"""A small DCGAN trained here on real face crops, for a kind of fake no set in ../shared/data holds: low-resolution GAN
faces that are visibly broken (smeared skin, colour blotches, warped eyes), as older GANs made them.

    python -m training.dcgan --data ../shared/data/tpdne128 --data ../shared/data/utk-real --data ../shared/data/lfw-real \\
        --split exports/default.split.json --out runs/data/dcgan64 --steps 2000

It learns from the real photos of the split's training part only. It writes a dataset folder that training.train
and training.evaluate read like any other: fake/ holds generated 64 px faces, real/ as many of the real crops it
learned from, both enlarged to 128 px and saved at JPEG quality 75 (tpdne128's preparation), so the two differ in
content only, never in size or compression. The generator's checkpoint and a grid of its faces (samples.png) sit
beside them; `--resume` goes on from the checkpoint. `--upsample resize` makes another kind of generator, one
that doubles its image by nearest-neighbour enlargement and a convolution instead of DCGAN's transposed
convolutions: a second up-sampling trace, so that training sees generators differ in more than one way.
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from service.preprocess import PreprocessSpec
from training.cache import CropCache
from training.cli import start_command
from training.data import DatasetError, Split, scan_dataset
from training.predict import device_for

log = logging.getLogger(__name__)
SIZE = 64  # the generator's output side
SAVED_SIZE, SAVED_QUALITY = 128, 75
LATENT = 100
Upsample = Literal["transposed", "resize"]
CROP_SPEC = PreprocessSpec(input_size=224)  # the crops the default model trains on, already in the cache


def doubled(c_in: int, c_out: int, upsample: Upsample) -> list[nn.Module]:
    """One step that doubles the side: a transposed convolution (DCGAN's, with its checkerboard), or a nearest-neighbour
    enlargement and a 3x3 convolution (Odena et al. 2016's resize-convolution, as in Stable Diffusion's decoder)."""
    if upsample == "transposed":
        return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]


def generator(width: int, upsample: Upsample = "transposed") -> nn.Sequential:
    """Radford et al. 2016's generator: a latent vector to a 64x64 RGB image in [-1, 1]."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(LATENT, width * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(width * 8), nn.ReLU(True)]
    channels = [width * 8, width * 4, width * 2, width]
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [*doubled(c_in, c_out, upsample), nn.BatchNorm2d(c_out), nn.ReLU(True)]
    return nn.Sequential(*layers, *doubled(width, 3, upsample), nn.Tanh())


def discriminator(width: int) -> nn.Sequential:
    """Its discriminator: a 64x64 image to one logit, real against generated."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    channels = [width, width * 2, width * 4, width * 8]
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
    return nn.Sequential(*layers, nn.Conv2d(width * 8, 1, 4, 1, 0, bias=False), nn.Flatten(0))


def real_crops(roots: list[Path], split: Split, cache: CropCache) -> tuple[list[str], np.ndarray]:
    """The training part's real photos as the default model's 224 px face crops: their names and pixels (N, 224, 224, 3)."""
    samples = [s for root in roots for s in split.select(scan_dataset(root), "train") if s.label == 0]
    if not samples:
        raise DatasetError("no real photos in the training part of these sets")
    crops = cache.crop_set(samples, CROP_SPEC, desc="real crops")
    return [f"{s.dataset}_{Path(s.key).stem}" for s in crops.samples], np.asarray(crops.crops)


def real_faces(roots: list[Path], split: Split, cache: CropCache) -> tuple[list[str], np.ndarray]:
    """The training part's real face crops scaled down to 64 px: their names and pixels (N, 64, 64, 3)."""
    names, crops = real_crops(roots, split, cache)
    return names, np.stack([np.asarray(Image.fromarray(c).resize((SIZE, SIZE), Image.LANCZOS)) for c in crops])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Gan:
    def __init__(self, width: int, seed: int, device: torch.device = torch.device("cpu"), upsample: Upsample = "transposed") -> None:
        torch.manual_seed(seed)
        self.width, self.step, self.device, self.upsample = width, 0, device, upsample
        self.g, self.d = generator(width, upsample).to(device), discriminator(width).to(device)
        for net in (self.g, self.d):
            net.apply(_dcgan_init)
        self.opt_g = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))

    def train_step(self, real: torch.Tensor) -> tuple[float, float]:
        loss = nn.BCEWithLogitsLoss()
        real = real.to(self.device)
        fake = self.g(torch.randn(len(real), LATENT, 1, 1, device=self.device))
        # One-sided label smoothing (real = 0.9) keeps the discriminator from winning outright on a few thousand photos.
        loss_d = (loss(self.d(real), torch.full((len(real),), 0.9, device=self.device))
                  + loss(self.d(fake.detach()), torch.zeros(len(real), device=self.device)))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        loss_g = loss(self.d(fake), torch.ones(len(real), device=self.device))
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        return loss_d.item(), loss_g.item()

    @torch.no_grad()
    def sample(self, count: int, seed: int) -> np.ndarray:
        self.g.eval()
        latent = torch.randn(count, LATENT, 1, 1, generator=torch.Generator().manual_seed(seed))
        images = torch.cat([self.g(chunk.to(self.device)) for chunk in latent.split(256)])
        self.g.train()
        return to_pixels(images)

    def save(self, path: Path) -> None:
        state = {name: getattr(self, name).state_dict() for name in ("g", "d", "opt_g", "opt_d")}
        torch.save({"width": self.width, "upsample": self.upsample, "step": self.step, **state}, path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        made = (state["width"], state.get("upsample", "transposed"))
        if made != (self.width, self.upsample):
            raise DatasetError(f"{path} holds a generator of width {made[0]} with {made[1]} up-sampling; resume it with the same --width and --upsample")
        for name in ("g", "d", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(state[name])
        self.step = state["step"]


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def train(gan: Gan, faces: np.ndarray, steps: int, batch: int, checkpoint: Path, seed: int) -> None:
    rng = np.random.default_rng(seed + gan.step)
    data = to_tensor(faces)
    with tqdm(total=steps, initial=gan.step, desc="dcgan", unit="step", mininterval=5) as bar:
        while gan.step < steps:
            chosen = data[rng.integers(0, len(data), batch)]
            flip = torch.from_numpy(rng.random(batch) < 0.5)
            chosen[flip] = chosen[flip].flip(3)
            loss_d, loss_g = gan.train_step(chosen)
            bar.update(1)
            bar.set_postfix(loss_d=f"{loss_d:.2f}", loss_g=f"{loss_g:.2f}", refresh=False)
            if gan.step % 250 == 0 or gan.step == steps:
                gan.save(checkpoint)


def prepared(pixels: np.ndarray) -> bytes:
    """One 64 px face as the set stores it: enlarged to 128 px, saved at JPEG quality 75."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((SAVED_SIZE, SAVED_SIZE), Image.BICUBIC).save(buffer, "JPEG", quality=SAVED_QUALITY)
    return buffer.getvalue()


def grid(images: np.ndarray, columns: int = 8) -> Image.Image:
    rows = -(-len(images) // columns)
    canvas = np.zeros((rows * SIZE, columns * SIZE, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = image
    return Image.fromarray(canvas)


def emptied_set(out: Path, available: int, count: int, seed: int) -> np.ndarray:
    """Empty real/ and fake/ under `out` (made where missing), and draw which `count` of the `available` real faces go in."""
    for label in ("real", "fake"):
        (out / label).mkdir(parents=True, exist_ok=True)
        for old in (out / label).glob("*.jpg"):
            old.unlink()
    return np.random.default_rng(seed).permutation(available)[:count]


def write_set(out: Path, gan: Gan, names: list[str], faces: np.ndarray, count: int, seed: int) -> None:
    """fake/ with `count` generated faces and real/ with `count` of the real ones, prepared alike."""
    chosen = emptied_set(out, len(faces), count, seed)
    for i in tqdm(chosen, desc="real/", unit="img", mininterval=2):
        (out / "real" / f"{names[i]}.jpg").write_bytes(prepared(faces[i]))
    for i, pixels in enumerate(tqdm(gan.sample(len(chosen), seed), desc="fake/", unit="img", mininterval=2)):
        (out / "fake" / f"dcgan_{i:05d}.jpg").write_bytes(prepared(pixels))
    grid(gan.sample(64, seed + 1)).save(out / "samples.png")


class Resumable(Protocol):
    step: int

    def load(self, path: Path) -> None: ...


def read_and_resume(read: Callable[[], tuple[list[str], np.ndarray]], model: Resumable, checkpoint: Path,
                    resume: bool) -> tuple[list[str], np.ndarray] | None:
    """The real faces `read` gives, with `model` loaded from `checkpoint` when resuming; None (said on stderr) where either fails."""
    try:
        names, pixels = read()
        if resume and checkpoint.exists():
            model.load(checkpoint)
            log.info("resumed at step %d", model.step)
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return names, pixels


def main(argv: list[str] | None = None) -> int:
    argv, _ = start_command("training.dcgan", argv)
    parser = argparse.ArgumentParser(prog="python -m training.dcgan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a set whose real/ photos to learn from (repeatable)")
    parser.add_argument("--split", type=Path, required=True, help="split file (e.g. exports/default.split.json): only its training part is used")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write (real/, fake/)")
    parser.add_argument("--steps", type=int, default=2000, help="generator updates, batch 64")
    parser.add_argument("--width", type=int, default=32, help="channels of the networks' outermost layers (DCGAN's 64 is 4x slower)")
    parser.add_argument("--count", type=int, default=1500, help="fake faces to write, and as many real ones")
    parser.add_argument("--upsample", choices=["transposed", "resize"], default="transposed",
                        help="how the generator doubles its image: transposed convolutions (DCGAN's) or nearest-neighbour "
                             "enlargement and a convolution (a different up-sampling trace, as in Stable Diffusion's decoder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="go on from <out>/gan.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the networks train (auto: CUDA when present); 2,000 steps took 3.5 minutes on 16 CPU cores")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoint = args.out / "gan.pt"
    gan = Gan(args.width, args.seed, device_for(args.device), args.upsample)
    started = read_and_resume(lambda: real_faces(args.data, Split.load(args.split), CropCache()), gan, checkpoint, args.resume)
    if started is None:
        return 2
    names, faces = started
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("learning from %d real faces", len(faces))
    train(gan, faces, args.steps, 64, checkpoint, args.seed)
    write_set(args.out, gan, names, faces, min(args.count, len(faces)), args.seed)
    log.info("wrote %s: real/ and fake/ with %d photos each, samples.png", args.out, min(args.count, len(faces)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
