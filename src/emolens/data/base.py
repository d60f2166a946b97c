"""The dataset type every loader returns: :class:`Sample` s decoded to fixed-size faces (image decoding itself
is :mod:`emolens.imageio`, re-exported here for the loaders)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..geometry import cut_square, face_square
from ..imageio import (  # noqa: F401 - re-exported: the loaders' image I/O
    IMAGE_EXT,
    MAX_PIXELS,
    DataError,
    ImageTooLarge,
    crop_box,
    crop_resized,
    decode_image,
    file_problem,
    header_size,
    read_image,
    to_uint8_channels,
)

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One face: an image file (or in-memory pixels), an optional face box and its labels."""

    label: int
    path: str | None = None
    pixels: np.ndarray | None = None  # uint8 HxW or HxWx3 (e.g. from fer2013.csv)
    box: tuple[int, int, int, int] | None = None  # x, y, w, h of the region to cut out (clipped, resized)
    face: tuple[float, float, float, float] | None = None  # detector-style face box: cut the FER-like square
    soft: np.ndarray | None = None  # vote distribution over classes (sums to 1)
    valence: float | None = None
    arousal: float | None = None

    @property
    def name(self) -> str:
        return self.path if self.path is not None else "<in-memory pixels>"


#: The label :class:`FaceDataset` (``on_error="mark"``) gives an unreadable image: PyTorch's ``ignore_index``.
UNREADABLE = -100


class FaceDataset(Dataset):
    """A list of :class:`Sample` s decoded to fixed-size uint8 faces, then ``transform`` ed.

    ``__getitem__`` returns ``(image, label, soft)``: the transformed image tensor, the integer
    label and the soft target (vote distribution, or one-hot when the dataset has no votes).

    ``on_error="raise"`` stops at the first unreadable image with a :class:`DataError`;
    ``"skip"`` logs it, counts it in :attr:`bad_files` and serves the next readable sample (training);
    ``"mark"`` logs it and serves a blank image labelled :data:`UNREADABLE`, for scoring to leave out (a
    replacement would be counted twice).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        name: str = "dataset",
        image_size: int = 48,
        channels: int = 1,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_error: str = "skip",
    ) -> None:
        if len(samples) == 0:
            raise DataError(f"{name}: no images found")
        if on_error not in ("raise", "skip", "mark"):
            raise ValueError("on_error must be 'raise', 'skip' or 'mark'")
        n = len(classes)
        for s in samples:
            if not 0 <= s.label < n:
                raise DataError(f"{s.name}: label {s.label} out of range for {n} classes {list(classes)}")
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.name = name
        self.image_size = image_size
        self.channels = channels
        self.transform = transform
        self.on_error = on_error
        self.bad_files: dict[str, str] = {}
        self._cache: np.ndarray | None = None  # set by emolens.data.cache
        #: the datasets it is made of, in order: (name, first index, end index); one part unless mixed
        self.parts: list[tuple[str, int, int]] = [(name, 0, len(self.samples))]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.classes))

    def soft_target(self, i: int) -> np.ndarray:
        s = self.samples[i]
        if s.soft is not None:
            return s.soft.astype(np.float32)
        onehot = np.zeros(len(self.classes), np.float32)
        onehot[s.label] = 1.0
        return onehot

    def load_face(self, i: int) -> np.ndarray:
        """Decoded, cropped and resized face ``i`` as uint8 HxW or HxWx3 (no augmentation)."""
        if self._cache is not None:
            return np.asarray(self._cache[i])
        s = self.samples[i]
        if s.pixels is not None:
            img = to_uint8_channels(s.pixels, self.channels, source=s.name)
        else:
            img = read_image(s.path, self.channels)  # type: ignore[arg-type]
        if s.face is not None:
            cx, cy, side = face_square(s.face)
            return cut_square(img, cx, cy, side, self.image_size)
        return crop_resized(img, s.box, self.image_size)

    def _load_checked(self, i: int) -> tuple[int, np.ndarray]:
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            try:
                return j, self.load_face(j)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                name = self.samples[j].name
                if name not in self.bad_files:
                    self.bad_files[name] = str(e)
                    log.warning("skipping unreadable image (%d so far): %s", len(self.bad_files), e)
        raise DataError(f"{self.name}: none of the {len(self.samples)} images could be read")

    def __getitem__(self, i: int):
        if self.on_error == "mark":
            try:
                j, img = i, self.load_face(i)
            except DataError as e:
                log.warning("unreadable image, left out of the scores: %s", e)
                self.bad_files.setdefault(self.samples[i].name, str(e))
                shape = (self.image_size, self.image_size) + ((3,) if self.channels == 3 else ())
                t = self._tensor(np.zeros(shape, np.uint8))
                return t, UNREADABLE, torch.zeros(len(self.classes))
        else:
            j, img = self._load_checked(i)
        return self._tensor(img), self.samples[j].label, torch.from_numpy(self.soft_target(j))

    def _tensor(self, img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        return self.transform(t) if self.transform is not None else t
