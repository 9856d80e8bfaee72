"""Getting the dataset: from a folder, from the zip, from a URL; incomplete data is named, never half-used."""

import shutil

import pytest

from common.errors import DatasetError
from dataset import download, kvasir
from dataset.archive import ArchiveError
from dataset.download import DownloadError
from dataset.kvasir import pair_images_and_masks, prepare_kvasir_seg
from dataset.synthetic import make_kvasir_folder, zip_folder


def test_uses_an_extracted_folder(kvasir_dir):
    pairs = prepare_kvasir_seg(kvasir_dir, url="http://127.0.0.1:9/never-called")
    assert len(pairs) == 16
    assert [sample_id for sample_id, _, _ in pairs] == sorted(sample_id for sample_id, _, _ in pairs)
    assert all(image.stem == mask.stem == sample_id for sample_id, image, mask in pairs)


def test_extracts_the_zip_when_no_folder(tmp_path, kvasir_zip, capsys):
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")
    pairs = prepare_kvasir_seg(tmp_path, url="http://127.0.0.1:9/never-called")
    assert len(pairs) == 16
    assert "16 images with masks" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Kvasir-SEG", "kvasir-seg.zip"]  # no staging left


def test_downloads_then_extracts(tmp_path, kvasir_zip, http_server):
    served, url, seen = http_server
    shutil.copy(kvasir_zip, served / "kvasir-seg.zip")
    pairs = prepare_kvasir_seg(tmp_path / "data", url=f"{url}/kvasir-seg.zip")
    assert len(pairs) == 16 and seen == ["/kvasir-seg.zip"]
    assert prepare_kvasir_seg(tmp_path / "data", url=f"{url}/kvasir-seg.zip") == pairs
    assert seen == ["/kvasir-seg.zip"]  # the second call uses what is on disk


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("/missing.zip", "the server answered HTTP 404"),
        ("/server-error", "the server answered HTTP 500"),
        ("/drops-mid-file", "the connection broke off before the whole file arrived"),
        ("/html-page.zip", "sent is an HTML page, not the Kvasir-SEG zip"),
    ],
)
def test_failed_download_says_what_happened_and_where_to_put_the_zip(tmp_path, http_server, monkeypatch, route, reason):
    _, url, _ = http_server
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    with pytest.raises(DownloadError) as error:
        prepare_kvasir_seg(tmp_path / "data", url=url + route)
    message = str(error.value)
    assert f"could not download {url + route}: " in message or f"what {url + route} sent" in message
    assert reason in message and "\n" not in message
    assert message.endswith(f"save it as {tmp_path / 'data' / 'kvasir-seg.zip'}, then run again.")
    assert list((tmp_path / "data").iterdir()) == []  # no zip, no .part, no half dataset for a later run to trust


def test_interrupted_extraction_leaves_no_dataset(tmp_path, kvasir_zip, monkeypatch):
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")

    def interrupted(zip_path, target):
        (target / "Kvasir-SEG" / "images").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(kvasir, "safe_extract_zip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_kvasir_seg(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvasir-seg.zip"]
    monkeypatch.undo()
    assert len(prepare_kvasir_seg(tmp_path)) == 16  # the next run starts cleanly


def test_zip_without_kvasir_layout_is_refused(tmp_path):
    other = tmp_path / "other"
    (other / "pictures").mkdir(parents=True)
    (other / "pictures" / "a.jpg").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    zip_folder(other, tmp_path / "data" / "kvasir-seg.zip")
    with pytest.raises(DatasetError, match="Kvasir-SEG layout"):
        prepare_kvasir_seg(tmp_path / "data")


def test_corrupt_zip_on_disk_is_reported(tmp_path):
    (tmp_path / "kvasir-seg.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        prepare_kvasir_seg(tmp_path)


def test_missing_mask_and_missing_image_are_named(tmp_path):
    root = make_kvasir_folder(tmp_path, count=4)
    (root / "masks" / "sample_001.jpg").unlink()
    (root / "images" / "sample_002.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        pair_images_and_masks(root / "images", root / "masks")
    assert "sample_001" in str(error.value) and "without a mask" in str(error.value)
    assert "sample_002" in str(error.value) and "without an image" in str(error.value)


def test_empty_folder_is_reported(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
