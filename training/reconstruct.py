"""Real faces passed through a generator's up-sampling layers: fakes that differ from their real originals in the traces
a generator leaves and in nothing else (after Zhang et al. 2019, AutoGAN).

    python -m training.reconstruct --data ../shared/data/tpdne128 --data ../shared/data/rff --data ../shared/data/utk-real \\
        --data ../shared/data/lfw-real --split exports/default.split.json --out runs/data/recon224 --steps 1500

A small fully convolutional autoencoder learns to give back the training part's real 224 px face crops through a
latent four times smaller on each side; its decoder doubles the image twice as DCGAN's generator does (transposed
convolutions, or `--upsample resize`). It writes a dataset folder that training.train and training.evaluate read like
any other: real/ holds real crops, fake/ the same crops as the autoencoder gives them back, both saved at 224 px and
JPEG quality 90. Face, pose, framing, size and compression are the same on both sides, so a detector trained on them
cannot tell them apart by content, only by what up-sampling left. The DCGAN faces (training.dcgan) teach the
opposite: broken content. The checkpoint and samples.png (originals, reconstructions, their difference
magnified) sit beside them; `--resume` goes on from the checkpoint.
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from training.cache import CropCache
from training.cli import start_command
from training.data import DatasetError, Split
from training.dcgan import Upsample, doubled, emptied_set, read_and_resume, real_crops, to_pixels, to_tensor
from training.predict import device_for

log = logging.getLogger(__name__)
PATCH = 64  # the side of the training patches; the network is fully convolutional
SAVED_QUALITY = 90


def autoencoder(width: int, latent: int, upsample: Upsample = "transposed") -> nn.Sequential:
    """An image in [-1, 1] to itself through a (latent, H/4, W/4) code; H and W must be multiples of 4."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(width, width * 2, 4, 2, 1), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(width * 2, latent, 3, 1, 1),
        nn.Conv2d(latent, width * 2, 3, 1, 1), nn.BatchNorm2d(width * 2), nn.ReLU(True),
        *doubled(width * 2, width, upsample), nn.BatchNorm2d(width), nn.ReLU(True),
        *doubled(width, 3, upsample), nn.Tanh(),
    )


class Reconstructor:
    def __init__(self, width: int, latent: int, upsample: Upsample, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        self.made = {"width": width, "latent": latent, "upsample": upsample}
        self.net, self.step, self.device = autoencoder(width, latent, upsample).to(device), 0, device
        self.opt = torch.optim.Adam(self.net.parameters(), 1e-3)

    def train_step(self, patches: torch.Tensor) -> float:
        patches = patches.to(self.device)
        loss = (self.net(patches) - patches).abs().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def reconstruct(self, crops: np.ndarray, batch: int = 16) -> np.ndarray:
        self.net.eval()
        out = [to_pixels(self.net(to_tensor(crops[i:i + batch]).to(self.device))) for i in range(0, len(crops), batch)]
        self.net.train()
        return np.concatenate(out)

    def save(self, path: Path) -> None:
        torch.save({**self.made, "step": self.step, "net": self.net.state_dict(), "opt": self.opt.state_dict()}, path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        made = {key: state[key] for key in self.made}
        if made != self.made:
            raise DatasetError(f"{path} holds an autoencoder made with {made}; resume it with the same --width, --latent and --upsample")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.step = state["step"]


def random_patches(crops: np.ndarray, count: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` PATCH-px squares cut at random from random crops, half of them mirrored."""
    side = crops.shape[1]
    picks = rng.integers(0, len(crops), count)
    tops, lefts = rng.integers(0, side - PATCH + 1, (2, count))
    patches = np.stack([crops[i, t:t + PATCH, l:l + PATCH] for i, t, l in zip(picks, tops, lefts)])
    flip = rng.random(count) < 0.5
    patches[flip] = patches[flip, :, ::-1]
    return to_tensor(np.ascontiguousarray(patches))


def train(model: Reconstructor, crops: np.ndarray, steps: int, batch: int, checkpoint: Path, seed: int) -> None:
    rng = np.random.default_rng(seed + model.step)
    with tqdm(total=steps, initial=model.step, desc="autoencoder", unit="step", mininterval=5) as bar:
        while model.step < steps:
            loss = model.train_step(random_patches(crops, batch, rng))
            bar.update(1)
            bar.set_postfix(l1=f"{loss:.4f}", refresh=False)
            if model.step % 250 == 0 or model.step == steps:
                model.save(checkpoint)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=SAVED_QUALITY)
    return buffer.getvalue()


def samples_png(originals: np.ndarray, rebuilt: np.ndarray, gain: float = 8.0) -> Image.Image:
    """Three rows: originals, reconstructions, and their difference magnified `gain` times around mid-grey."""
    difference = np.clip(128 + gain * (rebuilt.astype(np.float32) - originals), 0, 255).astype(np.uint8)
    return Image.fromarray(np.concatenate([np.concatenate(list(row), axis=1) for row in (originals, rebuilt, difference)]))


def write_set(out: Path, model: Reconstructor, names: list[str], crops: np.ndarray, count: int, seed: int) -> float:
    """real/ with `count` real crops and fake/ with their reconstructions; returns the reconstructions' PSNR in dB."""
    chosen = emptied_set(out, len(crops), count, seed)
    quality = []
    for start in tqdm(range(0, len(chosen), 64), desc="real/ and fake/", unit="batch", mininterval=2):
        picks = chosen[start:start + 64]
        rebuilt = model.reconstruct(crops[picks])
        for i, pixels in zip(picks, rebuilt):
            (out / "real" / f"{names[i]}.jpg").write_bytes(jpeg(crops[i]))
            (out / "fake" / f"recon_{names[i]}.jpg").write_bytes(jpeg(pixels))
            quality.append(psnr(crops[i], pixels))
    shown = chosen[:6]
    samples_png(crops[shown], model.reconstruct(crops[shown])).save(out / "samples.png")
    return float(np.mean(quality))


def main(argv: list[str] | None = None) -> int:
    argv, _ = start_command("training.reconstruct", argv)
    parser = argparse.ArgumentParser(prog="python -m training.reconstruct", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a set whose real/ photos to reconstruct (repeatable)")
    parser.add_argument("--split", type=Path, required=True, help="split file (e.g. exports/default.split.json): only its training part is used")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write (real/, fake/)")
    parser.add_argument("--steps", type=int, default=1500, help=f"updates, 32 patches of {PATCH} px each")
    parser.add_argument("--width", type=int, default=32, help="channels of the outermost layers")
    parser.add_argument("--latent", type=int, default=16, help="channels of the code at a quarter of the side (16: a third of the pixels' numbers)")
    parser.add_argument("--count", type=int, default=3000, help="real crops to write, and as many reconstructions")
    parser.add_argument("--upsample", choices=["transposed", "resize"], default="transposed",
                        help="how the decoder doubles its image: transposed convolutions or nearest-neighbour enlargement and a convolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="go on from <out>/autoencoder.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where it trains (auto: CUDA when present)")
    args = parser.parse_args(argv)
    checkpoint = args.out / "autoencoder.pt"
    model = Reconstructor(args.width, args.latent, args.upsample, args.seed, device_for(args.device))
    started = read_and_resume(lambda: real_crops(args.data, Split.load(args.split), CropCache()), model, checkpoint, args.resume)
    if started is None:
        return 2
    names, crops = started
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("learning from %d real crops", len(crops))
    train(model, crops, args.steps, 32, checkpoint, args.seed)
    count = min(args.count, len(crops))
    quality = write_set(args.out, model, names, crops, count, args.seed)
    log.info("wrote %s: real/ and fake/ with %d photos each (reconstructions at %.1f dB PSNR), samples.png", args.out, count, quality)
    return 0


if __name__ == "__main__":
    sys.exit(main())
