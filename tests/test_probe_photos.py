"""The `photos` probe dataset: real photographs that ship in pip wheels, split so that fit and
evaluation crops share no pixel."""

from __future__ import annotations

import numpy as np
import pytest

from genrep.errors import UsageError
from genrep.evaluate.datasets import DATASETS
from genrep.evaluate.datasets.photos import PhotosDataset


@pytest.fixture(scope="module")
def photos() -> PhotosDataset:
    return DATASETS.build("photos")


def test_photos_are_fixed_offline_and_balanced(photos):
    assert photos.identity() == PhotosDataset().identity()
    assert len(photos.classes) == 20
    for split, per_photo in PhotosDataset.CROPS.items():
        assert np.bincount(photos.targets[split]).tolist() == [per_photo] * 20
    image = photos.load_image("val", 7)
    assert image.size == (128, 128) and image.mode == "RGB"
    assert np.asarray(image).std() > 1  # a crop of a photo, not a blank


def test_fit_and_evaluation_crops_share_no_pixel(photos):
    for label, photo in enumerate(photos._photos):
        covered = {}
        for split in photos.splits:
            mask = np.zeros(photo.shape[:2], bool)
            for box_label, x0, y0, x1, y1 in photos._boxes[split]:
                if box_label == label:
                    mask[y0:y1, x0:x1] = True
            covered[split] = mask
        assert covered["train"].any() and covered["val"].any()
        assert not (covered["train"] & covered["val"]).any(), photos.classes[label]


def test_photos_refuses_a_root(tmp_path):
    with pytest.raises(UsageError, match="needs no files"):
        DATASETS.build("photos", root=tmp_path)
