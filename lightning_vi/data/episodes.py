"""N-way K-shot episodes over class-labelled data, with disjoint meta-train and held-out meta-test classes.

An episode draws ``n_way`` distinct classes, then ``k_shot`` support and ``n_query`` query examples per
class (without replacement); its labels are re-indexed to ``0..n_way-1`` in the drawn class order. Episodes
are built for a whole batch at once from random sort keys (no Python loop over episodes or classes).

Batches are dicts (``E`` episodes per batch): ``x`` [E, N*Q, ...] and ``y`` [E, N*Q] (query),
``support_x`` [E, N*K, ...], ``support_y`` [E, N*K], ``classes`` [E, N] (original labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.data.glyphs import glyph_data

#: data set name -> (number of classes, default number of meta-training classes: ids below it).
DATASETS = {"digits": (10, 5), "glyphs": (100, 64)}


def check_episode_shape(n_way: int, k_shot: int, n_query: int, classes: list[int]) -> None:
    """Raise ``ValueError`` naming the bad value unless ``1 <= n_way <= len(classes)``, ``k_shot, n_query >= 1``."""
    if n_way < 1 or n_way > len(classes):
        raise ValueError(f"n_way={n_way!r} is out of range; allowed: [1, {len(classes)}] "
                         f"(the number of available classes {classes})")
    check_range("k_shot", k_shot, 1)
    check_range("n_query", n_query, 1)


class EpisodeSampler:
    """Draws episode indices into a labelled set ``y`` restricted to ``classes``.

    Args:
        y: labels [M] of the whole data set. classes: the labels episodes may use.
        n_way: classes per episode (<= len(classes)). k_shot: support examples per class (>= 1).
        n_query: query examples per class (>= 1).
    """

    def __init__(self, y: Tensor, classes: Sequence[int], n_way: int, k_shot: int, n_query: int) -> None:
        classes = [int(c) for c in classes]
        check_episode_shape(n_way, k_shot, n_query, classes)
        self.classes = torch.tensor(classes, dtype=torch.long)
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        members = [torch.nonzero(y == c).flatten() for c in classes]
        counts = torch.tensor([len(m) for m in members])
        need = k_shot + n_query
        if int(counts.min()) < need:
            c = classes[int(counts.argmin())]
            raise ValueError(f"k_shot + n_query = {need} exceeds the {int(counts.min())} examples of class {c}; "
                             f"allowed: k_shot + n_query <= {int(counts.min())}")
        # Padded [C, max_count] table of example indices per class; padding is never drawn (sort key inf).
        self.table = torch.zeros(len(classes), int(counts.max()), dtype=torch.long)
        self.valid = torch.arange(self.table.shape[1]) < counts[:, None]
        for i, m in enumerate(members):  # once per class at construction, not per episode
            self.table[i, :len(m)] = m

    def sample(self, num_episodes: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Indices ``support`` [E, N, K], ``query`` [E, N, Q] into the data set and ``classes`` [E, N]."""
        e, n, k = num_episodes, self.n_way, self.k_shot
        which = torch.rand(e, len(self.classes), generator=generator).argsort(-1)[:, :n]  # [E, N] class slots
        keys = torch.rand(e, n, self.table.shape[1], generator=generator)
        keys = keys.masked_fill(~self.valid[which], float("inf"))
        pos = keys.argsort(-1)[..., :k + self.n_query]  # distinct examples per class
        idx = self.table[which].gather(-1, pos)  # [E, N, K+Q]
        return {"support": idx[..., :k], "query": idx[..., k:], "classes": self.classes[which]}


def gather_episodes(data: dict[str, Tensor], idx: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn sampled indices into an episode batch (see the module docstring for the keys)."""
    e, n = idx["classes"].shape
    labels = torch.arange(n).view(1, n, 1)
    sup, qry = idx["support"], idx["query"]
    return {
        "x": data["x"][qry.flatten(1)], "y": labels.expand_as(qry).reshape(e, -1),
        "support_x": data["x"][sup.flatten(1)], "support_y": labels.expand_as(sup).reshape(e, -1),
        "classes": idx["classes"],
    }


class EpisodeDataset(Dataset):
    """``length`` episodes; fresh random episodes on every access (``fixed=False``) or drawn once."""

    def __init__(self, data: dict[str, Tensor], sampler: EpisodeSampler, length: int, seed: int,
                 fixed: bool) -> None:
        self.data, self.sampler, self.length = data, sampler, length
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed = sampler.sample(length, self.generator) if fixed else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, idx: list[int]) -> dict[str, Tensor]:
        if self.fixed is None:
            sel = self.sampler.sample(len(idx), self.generator)
        else:
            index = torch.as_tensor(idx, dtype=torch.long)
            sel = {k: v[index] for k, v in self.fixed.items()}
        return gather_episodes(self.data, sel)


def rotated_classes(data: dict[str, Tensor], classes: list[int], rotations: int
                    ) -> tuple[dict[str, Tensor], list[int]]:
    """Add images of ``classes`` rotated by ``k * 360 / rotations`` degrees as new classes
    ``label + k * (max_label + 1)``; returns the extended data and the extended class list."""
    if rotations == 1:
        return data, list(classes)
    x, y = data["x"], data["y"]
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"train_rotations={rotations} needs square images [M, C, S, S]; "
                         f"got x of shape {tuple(x.shape)}")
    base = int(y.max()) + 1
    keep = torch.isin(y, torch.tensor(classes))
    xs, ys, out_classes = [x], [y], list(classes)
    for k in range(1, rotations):
        xs.append(torch.rot90(x[keep], k * 4 // rotations, dims=(-2, -1)))
        ys.append(y[keep] + k * base)
        out_classes += [c + k * base for c in classes]
    return {"x": torch.cat(xs), "y": torch.cat(ys)}, out_classes


def _identity(batch):
    return batch


class EpisodeDataModule(L.LightningDataModule):
    """Few-shot episodes over scikit-learn digits, procedural glyphs or any ``{"x", "y"}`` tensors.

    Meta-training episodes use only ``train_classes`` (fresh random episodes every epoch); validation
    and test episodes use only the held-out ``test_classes`` (fixed sets, different seeds). Default splits:
    digits {0..4} / {5..9} (held-out 5-way episodes on the 10 digit classes); glyphs (``glyph_data``, 100
    i.i.d. classes at ``image_size`` 10) {0..63} / {64..99}. With
    ``train_rotations=4`` every meta-training class also appears rotated by 90, 180 and 270 degrees as three
    new classes (the Omniglot protocol of Santoro et al. 2016 / Vinyals et al. 2016), which gives 20
    meta-training classes instead of 5; held-out classes are never rotated.

    Args:
        n_way, k_shot, n_query: episode shape (see ``EpisodeSampler``).
        dataset: ``"digits"`` or ``"glyphs"`` (ignored when ``data`` is given).
        train_classes, test_classes: disjoint label sets (default: the data set's split above).
        episodes_per_epoch: training episodes per epoch. num_val_episodes, num_test_episodes: fixed sets.
        train_n_way, train_k_shot: episode shape in meta-training (default: ``n_way``, ``k_shot``; training
            with more ways than testing is the usual prototypical-network practice).
        batch_size: episodes per batch. train_rotations: 1, 2 or 4 (see above).
        data: optional ``{"x": [M, ...], "y": [M]}`` used instead of ``dataset``.
    """

    def __init__(self, n_way: int = 5, k_shot: int = 1, n_query: int = 15, dataset: str = "digits",
                 train_classes: list[int] | None = None, test_classes: list[int] | None = None,
                 episodes_per_epoch: int = 400, num_val_episodes: int = 100, num_test_episodes: int = 200,
                 batch_size: int = 16, seed: int = 0, image_size: int | None = None, train_rotations: int = 1,
                 train_n_way: int | None = None, train_k_shot: int | None = None,
                 data: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        check_choice("dataset", dataset, tuple(DATASETS))
        check_choice("train_rotations", train_rotations, (1, 2, 4))
        n_classes, default_train = DATASETS[dataset]
        train_classes = list(range(default_train)) if train_classes is None else list(train_classes)
        test_classes = list(range(default_train, n_classes)) if test_classes is None else list(test_classes)
        overlap = sorted(set(train_classes) & set(test_classes))
        if overlap:
            raise ValueError(f"train_classes and test_classes must be disjoint; both contain {overlap}")
        for name, v in (("episodes_per_epoch", episodes_per_epoch), ("num_val_episodes", num_val_episodes),
                        ("num_test_episodes", num_test_episodes), ("batch_size", batch_size)):
            check_range(name, v, 1)
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.train_classes, self.test_classes = list(train_classes), list(test_classes)
        self.episodes_per_epoch, self.num_val_episodes = episodes_per_epoch, num_val_episodes
        self.num_test_episodes, self.batch_size, self.seed = num_test_episodes, batch_size, seed
        self.image_size = image_size or {"digits": 8, "glyphs": 10}[dataset]
        self.data, self.train_rotations = data, train_rotations
        self.dataset = dataset
        self.train_n_way, self.train_k_shot = train_n_way, train_k_shot
        # Validate the episode shapes now, before any data is loaded (rotations only add training classes).
        check_episode_shape(n_way, k_shot, n_query, self.test_classes)
        check_episode_shape(train_n_way or n_way, train_k_shot or k_shot, n_query,
                            self.train_classes * train_rotations)
        self.datasets: dict[str, EpisodeDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.data is None and self.dataset == "digits":
            self.data = load_digits_tensors(self.image_size)
        elif self.data is None:
            self.data = glyph_data(image_size=self.image_size, seed=self.seed)
        shape = (self.n_way, self.k_shot, self.n_query)
        train_data, train_classes = rotated_classes(self.data, self.train_classes, self.train_rotations)
        train = EpisodeSampler(train_data["y"], train_classes, self.train_n_way or self.n_way,
                               self.train_k_shot or self.k_shot, self.n_query)
        test = EpisodeSampler(self.data["y"], self.test_classes, *shape)
        self.datasets = {
            "train": EpisodeDataset(train_data, train, self.episodes_per_epoch, self.seed, fixed=False),
            "val": EpisodeDataset(self.data, test, self.num_val_episodes, self.seed + 1, fixed=True),
            "test": EpisodeDataset(self.data, test, self.num_test_episodes, self.seed + 2, fixed=True),
        }

    @property
    def example_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.data["x"].shape[1:])

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=False, collate_fn=_identity)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
