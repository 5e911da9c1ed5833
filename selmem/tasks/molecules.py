"""Molecular property prediction from SMILES, with real data that RDKit ships.

Two data sets, read from the installed ``rdkit`` package (no download):

- ``target="tpsa"``: topological polar surface area of the first 5,000 NCI compounds,
  ``<RDDataDir>/NCI/first_5k.tpsa.csv`` ("# comment", then ``SMILES,TPSA`` lines; 4,999 rows);
- ``target="activity"``: measured activities (pIC50-like) of the ChEMBL series CHEMBL2321810,
  ``<RDContribDir>/FreeWilson/data/CHEMBL2321810.smi`` (``SMILES name``) joined on the name with
  ``CHEMBL2321810_act.csv`` (``Name,Act``; 1,017 rows).

RDKit is an optional extra (``pip install 'selmem[molecules]'``); it is imported only when a
molecules task is validated or used. Molecule ``i`` (file order) is held out for test when
``crc32(str(i)) % 5 == 0`` (about 20%). Molecules whose SMILES exceed ``max_len`` bytes are
dropped. The property is cut into ``num_bins`` quantile bins whose edges come from the train
split only, so one LM head classifies: label token ``257 + bin``.

Ids: SMILES bytes ``1..255``, ``0`` PAD, ``256`` ANSWER, labels ``257..256+num_bins``;
``vocab_size = 257 + num_bins``, ``seq_len = max_len + 1``. Rows are right-aligned: left PAD,
the SMILES, ANSWER last; only ANSWER is scored, target = the label token. Every SMILES byte is
``relevant``; ``source`` at ANSWER spans the SMILES.

Worked example, ``MoleculesTask(target="tpsa", max_len=12)``: benzoquinone ``CC1=CC(=O)C=CC1=O``
is 18 bytes, so it is dropped; a molecule ``CCO`` whose property fell in bin 0 would be::

    position   0 ... 8   9  10  11  12
    tokens     0 ... 0  67  67  79 256        (C C O ANSWER)
    targets                            257
    loss_mask                          ^
    relevant           ^   ^   ^      source at 12: [9, 12)

- train: molecules drawn uniformly with replacement from the rng;
- test: batch ``i`` holds test molecules ``i*B .. i*B+B-1`` modulo their number (in file order);
  ``test_set`` takes each test molecule once, the last batch shorter.

Chance accuracy is ``1/num_bins`` (quantile bins are about balanced). Batches also carry the
property itself (``Batch.values`` at ANSWER), and ``predict_values`` reads a number off the logits
(the bins' train medians weighted by the predicted probabilities), so evaluation reports MAE and
R^2 of the property as well as the bin accuracy.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from selmem.tasks.base import SPLIT_IDS, Batch, Task
from selmem.tasks.common import (
    PAD,
    check_batch_args,
    check_choice,
    check_int,
    empty_source,
    make_batch,
)

ANSWER, LABEL0 = 256, 257
INSTALL_HINT = (
    "the molecules task reads data shipped with RDKit: "
    "pip install 'selmem[molecules]' (or pip install rdkit)"
)


def rdkit_dirs() -> tuple[Path, Path]:
    """``(RDDataDir, RDContribDir)`` of the installed RDKit; ImportError with the install hint."""
    try:
        from rdkit import RDConfig
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return Path(RDConfig.RDDataDir), Path(RDConfig.RDContribDir)


@lru_cache(maxsize=2)
def load_molecules(target: str) -> tuple[tuple[str, ...], np.ndarray]:
    """All ``(SMILES, property)`` rows of ``target`` in file order, as (smiles, float64 values)."""
    data_dir, contrib_dir = rdkit_dirs()
    if target == "tpsa":
        path = data_dir / "NCI" / "first_5k.tpsa.csv"
        rows = [
            line.rsplit(",", 1)
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")
        ]
        pairs = [(smi, float(val)) for smi, val in rows]
    elif target == "activity":
        folder = contrib_dir / "FreeWilson" / "data"
        act = dict(
            line.split(",")
            for line in (folder / "CHEMBL2321810_act.csv").read_text().splitlines()[1:]
            if line
        )
        smis = [
            line.split()
            for line in (folder / "CHEMBL2321810.smi").read_text().splitlines()
            if line.strip()
        ]
        pairs = [(smi, float(act[name])) for smi, name in smis if name in act]
    else:
        raise ValueError(f"target must be one of ['tpsa', 'activity'], got {target!r}")
    return tuple(s for s, _ in pairs), np.array([v for _, v in pairs], dtype=np.float64)


@dataclass
class MoleculesTask(Task):
    """Classify a molecule's property (quantile bin of TPSA or activity) from its SMILES."""

    name: ClassVar[str] = "molecules"

    target: Literal["tpsa", "activity"] = "tpsa"
    """Property: "tpsa" (NCI, 4,999 molecules) or "activity" (ChEMBL CHEMBL2321810, 1,017)."""
    num_bins: int = 4
    """Quantile bins of the property (edges from the train split); chance is 1/num_bins."""
    max_len: int = 128
    """Longest SMILES kept, in bytes (longer molecules are dropped); seq_len = max_len + 1."""
    seed: int = 0
    """Seed of the train stream (test molecules are enumerated in order)."""

    @property
    def vocab_size(self) -> int:
        """Bytes, ANSWER and the label tokens."""
        return LABEL0 + self.num_bins

    @property
    def seq_len(self) -> int:
        """max_len SMILES bytes plus the ANSWER marker."""
        return self.max_len + 1

    @property
    def chance(self) -> float:
        """Accuracy of guessing a bin uniformly."""
        return 1.0 / self.num_bins

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field (ImportError without RDKit)."""
        check_choice("target", self.target, ("tpsa", "activity"))
        check_int("num_bins", self.num_bins, 2, 100)
        check_int("max_len", self.max_len, 1)
        check_int("seed", self.seed, 0)
        rdkit_dirs()

    def split_data(self, split: str) -> tuple[tuple[str, ...], np.ndarray]:
        """(SMILES, bin labels 0..num_bins-1) of ``split``, in file order."""
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        return _split_data(self.target, self.num_bins, self.max_len, split)

    def bin_edges(self) -> np.ndarray:
        """The ``num_bins - 1`` inner quantile edges, computed on the train split."""
        return _edges(self.target, self.num_bins, self.max_len)

    def bin_values(self) -> np.ndarray:
        """(num_bins,) the median property of each bin's train molecules: what a bin stands for."""
        return _bin_values(self.target, self.num_bins, self.max_len)

    def predict_values(self, logits: Tensor) -> Tensor:
        """The predicted property: the bins' train medians weighted by the model's probabilities
        over the label tokens (the rest of the vocabulary is ignored). (n, vocab) -> (n,)."""
        probs = logits[..., LABEL0 : LABEL0 + self.num_bins].float().softmax(-1)
        return probs @ torch.as_tensor(self.bin_values(), dtype=probs.dtype, device=probs.device)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        smiles, _ = self.split_data(split)
        if split == "train":
            picks = self.rng(split, index).integers(0, len(smiles), size=batch_size)
        else:
            picks = (index * batch_size + np.arange(batch_size)) % len(smiles)
        return self._rows(split, picks)

    def test_set(self, n_batches: int, batch_size: int) -> list[Batch]:
        """Test molecules in file order, each at most once: up to ``n_batches`` batches, the last
        one shorter where the split runs out (so MAE and R^2 weigh every molecule alike)."""
        n = len(self.split_data("test")[0])
        starts = range(0, n, batch_size)[:n_batches]
        return [self._rows("test", np.arange(s, min(s + batch_size, n))) for s in starts]

    def _rows(self, split: str, picks: np.ndarray) -> Batch:
        smiles, labels = self.split_data(split)
        props = _split_values(self.target, self.max_len, split)
        B, N = len(picks), self.seq_len
        tokens = np.full((B, N), PAD, dtype=np.int64)
        targets = np.zeros((B, N), dtype=np.int64)
        relevant = np.zeros((B, N), dtype=bool)
        source = empty_source(B, N)
        for b, m in enumerate(picks):
            smi = smiles[m].encode()
            start = N - 1 - len(smi)
            tokens[b, start : N - 1] = list(smi)
            relevant[b, start : N - 1] = True
            source[b, N - 1] = (start, N - 1)
        tokens[:, N - 1] = ANSWER
        targets[:, N - 1] = LABEL0 + labels[picks]
        values = np.zeros((B, N))
        values[:, N - 1] = props[picks]
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, N - 1] = True
        return make_batch(tokens, targets, loss_mask, relevant, source, values)


def _is_test(i: int) -> bool:
    return zlib.crc32(str(i).encode()) % 5 == 0


@lru_cache(maxsize=16)
def _edges(target: str, num_bins: int, max_len: int) -> np.ndarray:
    smiles, values = load_molecules(target)
    keep = [i for i, s in enumerate(smiles) if len(s.encode()) <= max_len and not _is_test(i)]
    if not keep:
        raise ValueError(
            f"max_len={max_len} leaves no train molecules for target={target!r}; raise max_len"
        )
    return np.quantile(values[keep], np.arange(1, num_bins) / num_bins)


def _keep(target: str, max_len: int, split: str) -> list[int]:
    smiles, _ = load_molecules(target)
    return [i for i, s in enumerate(smiles) if len(s.encode()) <= max_len and _is_test(i) == (split == "test")]


@lru_cache(maxsize=16)
def _split_values(target: str, max_len: int, split: str) -> np.ndarray:
    """The property of each molecule of ``split``, in the order of ``_split_data``."""
    return load_molecules(target)[1][_keep(target, max_len, split)]


@lru_cache(maxsize=16)
def _bin_values(target: str, num_bins: int, max_len: int) -> np.ndarray:
    _, labels = _split_data(target, num_bins, max_len, "train")
    values = _split_values(target, max_len, "train")
    return np.array([np.median(values[labels == b]) if (labels == b).any() else np.nan for b in range(num_bins)])


@lru_cache(maxsize=16)
def _split_data(
    target: str, num_bins: int, max_len: int, split: str
) -> tuple[tuple[str, ...], np.ndarray]:
    smiles, values = load_molecules(target)
    keep = _keep(target, max_len, split)
    if not keep:
        raise ValueError(
            f"max_len={max_len} leaves no {split} molecules for target={target!r}; raise max_len"
        )
    labels = np.searchsorted(_edges(target, num_bins, max_len), values[keep], side="right")
    return tuple(smiles[i] for i in keep), labels.astype(np.int64)
