"""A copy of a training image (re-encoded, resized, renamed) is never scored as held out; images never seen are."""

import cv2
import pytest

from dataset.kvasir import prepare_kvasir_seg
from dataset.sources import DataRecord, Source, image_thumbnail, seen_images
from dataset.splits import Split
from dataset.synthetic import make_kvasir_folder


def thumbnail_record(pairs) -> DataRecord:
    """A record that trained on every pair, with digests and thumbnails."""
    ids = [sample_id for sample_id, _, _ in pairs]
    thumbnails = {sample_id: image_thumbnail(image) for sample_id, image, _ in pairs}
    return DataRecord([Source("kvasir")], Split(ids, [], [], False), {}, thumbnails)


COPIES = {  # how a training image may come back under another name; each is found
    "png": lambda image: (".png", image, []),
    "jpeg-q70": lambda image: (".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70]),
    "half-size": lambda image: (".png", cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), []),
    "larger": lambda image: (".jpg", cv2.resize(image, None, fx=1.7, fy=1.3, interpolation=cv2.INTER_CUBIC), []),
    "bmp": lambda image: (".bmp", image, []),
}


@pytest.mark.parametrize("how", list(COPIES))
def test_a_reencoded_or_resized_training_image_is_not_held_out(kvasir_dir, tmp_path, how):
    pairs = prepare_kvasir_seg(kvasir_dir)
    record = thumbnail_record(pairs[:8])
    suffix, copy, params = COPIES[how](cv2.imread(str(pairs[3][1])))
    (tmp_path / "copy").mkdir()
    cv2.imwrite(str(tmp_path / "copy" / f"renamed{suffix}"), copy, params)
    scored = [("copy/renamed", tmp_path / "copy" / f"renamed{suffix}", pairs[3][2]), *pairs[8:]]
    assert seen_images(record, scored) == [("copy/renamed", pairs[3][0])]  # the unseen images are not flagged


def test_images_never_seen_are_held_out(tmp_path):
    make_kvasir_folder(tmp_path / "a", count=40, seed=1)
    make_kvasir_folder(tmp_path / "b", count=40, seed=2)
    record = thumbnail_record(prepare_kvasir_seg(tmp_path / "a"))
    assert seen_images(record, prepare_kvasir_seg(tmp_path / "b")) == []
