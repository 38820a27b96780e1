"""Preprocessing as the method's authors did it, split into a cached part and a batch part.

Cached (once per sample, see cache.py): SLO resized to S x S and kept uint8; OCT reduced to K
slices evenly spaced along axis 0, each resized to S x S and z-scored per slice (float16).
Batch time (`batch_transform`, on any device, whole batches, no per-sample Python): SLO -> float,
3 channels, train-time random horizontal flip and brightness/contrast jitter, ImageNet
normalisation; OCT -> float32 (train: random horizontal flip).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JITTER = 0.2  # brightness and contrast factors drawn from [1 - JITTER, 1 + JITTER]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) float32 -> (N, size, size), bilinear with antialiasing (as PIL would)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images[:, None], size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[:, 0]


LUMA = (0.299, 0.587, 0.114)   # ITU-R 601-2, as PIL's convert("L")


def preprocess_slo(image: np.ndarray, size: int) -> np.ndarray:
    """SLO fundus (H, W), (H, W, 1) or RGB (H, W, 3) -> uint8 (size, size). RGB is converted to
    grey by ITU-R 601-2 luma (docs/data.md, "Audit"); the audit refuses other shapes."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = image.astype(np.float32) @ np.asarray(LUMA, np.float32)
    elif image.ndim == 3:
        image = image[..., 0]
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = _resize(t, size)[0].round().clamp_(0, 255)
    return out.to(torch.uint8).numpy()


def slice_indices(depth: int, k: int) -> np.ndarray:
    """K indices evenly spaced along axis 0 (np.linspace, rounded)."""
    return np.linspace(0, depth - 1, k).round().astype(np.int64)


def preprocess_oct(volume: np.ndarray, k: int, size: int) -> np.ndarray:
    """OCT volume (D, H, W) -> float16 (k, size, size): chosen slices resized, z-scored each."""
    volume = np.asarray(volume)
    picked = volume[slice_indices(volume.shape[0], k)]
    t = _resize(torch.from_numpy(np.ascontiguousarray(picked, dtype=np.float32)), size)
    mean = t.mean(dim=(1, 2), keepdim=True)
    std = t.std(dim=(1, 2), keepdim=True)
    return ((t - mean) / (std + 1e-6)).to(torch.float16).numpy()


def _uniform(n: int, generator, device, low: float, high: float) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device).to(device)
    return low + (high - low) * u


def _flip(x: torch.Tensor, generator) -> torch.Tensor:
    """Flip each sample along the last axis with probability 1/2."""
    mask = _uniform(x.shape[0], generator, x.device, 0.0, 1.0) < 0.5
    shape = (-1,) + (1,) * (x.dim() - 1)
    return torch.where(mask.view(shape), x.flip(-1), x)


def slo_to_input(slo: torch.Tensor, train: bool, generator=None) -> torch.Tensor:
    """uint8 (B, S, S) -> normalised float32 (B, 3, S, S)."""
    x = slo.float().div_(255.0)
    if train:
        b = x.shape[0]
        x = _flip(x, generator)
        brightness = _uniform(b, generator, x.device, 1 - JITTER, 1 + JITTER).view(b, 1, 1)
        contrast = _uniform(b, generator, x.device, 1 - JITTER, 1 + JITTER).view(b, 1, 1)
        x = x * brightness
        mean = x.mean(dim=(1, 2), keepdim=True)
        x = ((x - mean) * contrast + mean).clamp_(0.0, 1.0)
    # grey SLO -> 3 channels, each normalised with its ImageNet statistics (Python floats: no
    # per-step host-to-device copy of the constants)
    return torch.stack([(x - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dim=1)


def batch_transform(batch: dict, train: bool, generator=None) -> dict:
    """Device-side transforms of a collated batch; other keys pass through unchanged."""
    out = dict(batch)
    if "slo" in batch:
        out["slo"] = slo_to_input(batch["slo"], train, generator)
    if "oct" in batch:
        oct_ = batch["oct"].float()
        out["oct"] = _flip(oct_, generator) if train else oct_
    return out
