"""`stanford-cars`: Stanford Cars (196 car models) from its devkit annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrep.evaluate.datasets.base import DATASETS, ProbeDataset


@DATASETS.register("stanford-cars", aliases=("cars",))
class StanfordCarsDataset(ProbeDataset):
    """Stanford Cars (196 models, whole images) from its devkit .mat annotations; class ids start at 1."""

    layout = (
        "cars_train/, cars_test/, devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat "
        "(in devkit/ or next to it), optional devkit/cars_meta.mat"
    )
    fit_split = "train"
    eval_split = "test"
    linear_epochs = 100

    def _annotations(self, path: Path) -> list[tuple[str, int]]:
        from scipy.io import loadmat

        try:
            records = np.atleast_1d(loadmat(path, squeeze_me=True)["annotations"])
            return [(str(r["fname"]), int(r["class"]) - 1) for r in records]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.fail(f"cannot read annotations from {path}: {err}") from None

    def _scan(self) -> None:
        from scipy.io import loadmat

        devkit = self.root / "devkit"
        test_annos = next(
            (
                p
                for p in (
                    devkit / "cars_test_annos_withlabels.mat",
                    self.root / "cars_test_annos_withlabels.mat",
                )
                if p.is_file()
            ),
            None,
        )
        if not (devkit / "cars_train_annos.mat").is_file() or test_annos is None:
            raise self.fail(f"annotation .mat files are missing under {self.root}")
        annotations = {
            "train": self._annotations(devkit / "cars_train_annos.mat"),
            "test": self._annotations(test_annos),
        }
        for split, records in annotations.items():
            if any(label < 0 for _, label in records):
                raise self.fail(f"{split} annotations hold a class id below 1")
            self.items[split] = [f"cars_{split}/{fname}" for fname, _ in records]
            self.targets[split] = np.array([label for _, label in records], dtype=np.int64)
            self._require_files(split)
        num_classes = 1 + max(int(t.max()) for t in self.targets.values())
        if (devkit / "cars_meta.mat").is_file():
            self.classes = [
                str(c)
                for c in np.atleast_1d(
                    loadmat(devkit / "cars_meta.mat", squeeze_me=True)["class_names"]
                )
            ]
            if len(self.classes) < num_classes:
                raise self.fail(
                    f"cars_meta.mat names {len(self.classes)} classes but labels go up to {num_classes}"
                )
        else:
            self.classes = [f"class_{i + 1}" for i in range(num_classes)]
