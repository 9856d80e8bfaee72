"""Getting the dataset: from a folder, from the zip, from a URL; incomplete data is named, never half-used."""

import os
import re
import shutil
import threading
import zipfile

import pytest

from common.errors import DatasetError
from common.files import waiting_lock
from common.progress import format_size
from dataset import download, kvasir
from dataset.archive import ArchiveError, unpacked_size
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "Kvasir-SEG", "kvasir-seg.zip"]  # no staging


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
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".kvasir.lock"]  # no zip, .part or half dataset


def test_interrupted_extraction_leaves_no_dataset(tmp_path, kvasir_zip, monkeypatch):
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")

    def interrupted(zip_path, target):
        (target / "Kvasir-SEG" / "images").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(kvasir, "safe_extract_zip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_kvasir_seg(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "kvasir-seg.zip"]
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


def rezip(source, target, rename=lambda name: name, extra=()):
    """A copy of the zip `source` with every entry renamed by `rename`, plus `extra` (name, bytes) entries."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for entry in original.infolist():
            copy.writestr(rename(entry.filename), original.read(entry))
        for name, data in extra:
            copy.writestr(name, data)
    return target


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_two_files_with_one_stem_are_refused_naming_both(tmp_path, folder):
    root = make_kvasir_folder(tmp_path, count=3)
    shutil.copy(root / folder / "sample_001.jpg", root / folder / "sample_001.png")
    with pytest.raises(DatasetError) as error:
        pair_images_and_masks(root / "images", root / "masks")
    assert str(error.value) == (
        f"{root / folder / 'sample_001.jpg'} and {root / folder / 'sample_001.png'} have the same name stem, and"
        " images and masks are paired by stem; keep one of them."
    )


@pytest.mark.parametrize(
    "rename",
    [
        lambda name: name.replace("/", "\\"),  # Windows separators, as some Windows tools write them
        lambda name: f"kvasir-seg-copy/{name}",  # a re-zipped copy: one more folder on top
        lambda name: f"downloads/{name.replace('Kvasir-SEG', 'kvasir-seg-v2')}",  # ... with the folder renamed
    ],
    ids=["backslashes", "extra-top-folder", "extra-top-folder-renamed"],
)
def test_common_variants_of_the_zip_are_read(tmp_path, kvasir_zip, rename):
    rezip(kvasir_zip, tmp_path / "kvasir-seg.zip", rename, extra=[("__MACOSX/Kvasir-SEG/images/._x.jpg", b"mac")])
    pairs = prepare_kvasir_seg(tmp_path)
    assert len(pairs) == 16 and pairs[0][1] == tmp_path / "Kvasir-SEG" / "images" / "sample_000.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "Kvasir-SEG", "kvasir-seg.zip"]


def test_a_zip_with_two_dataset_folders_is_refused(tmp_path, kvasir_zip):
    rezip(kvasir_zip, tmp_path / "two.zip", lambda name: name.replace("Kvasir-SEG", "a"))
    rezip(tmp_path / "two.zip", tmp_path / "kvasir-seg.zip", extra=[("b/images/x.jpg", b"x"), ("b/masks/x.jpg", b"x")])
    with pytest.raises(DatasetError, match=r"kvasir-seg.zip holds several image and mask folders \(a, b\)"):
        prepare_kvasir_seg(tmp_path)


def test_a_folder_named_like_an_image_in_the_zip_is_named_in_one_line(tmp_path, kvasir_zip):
    rezip(kvasir_zip, tmp_path / "kvasir-seg.zip", extra=[("Kvasir-SEG/images/sample_999.jpg/", b"")])
    with pytest.raises(DatasetError) as error:
        prepare_kvasir_seg(tmp_path)
    assert str(error.value).startswith(
        f"in {tmp_path / 'kvasir-seg.zip'}: Kvasir-SEG/images/sample_999.jpg is a folder (or another non-file) named"
        " like an image; remove or rename it. To fix it, extract the zip by hand"
    )
    assert "\n" not in str(error.value) and ".extracting-" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "kvasir-seg.zip"]


def test_a_cut_zip_sent_without_a_length_is_retried_as_a_broken_transfer(tmp_path, http_server, monkeypatch):
    _, url, seen = http_server
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    with pytest.raises(DownloadError, match=re.escape(f"could not download {url}/cut-zip: the connection broke off")):
        prepare_kvasir_seg(tmp_path, url=f"{url}/cut-zip")
    assert seen == ["/cut-zip"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "served"]


def test_a_second_run_waits_for_the_extraction_and_uses_its_result(tmp_path, kvasir_zip, capsys):
    """Runs sharing the data folder: the second waits for the first's extraction instead of extracting again over
    the folder the first is reading."""
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")
    results = []
    with waiting_lock(tmp_path / ".kvasir.lock", "extracting in the test"):
        second = threading.Thread(target=lambda: results.append(prepare_kvasir_seg(tmp_path)))
        second.start()
        second.join(0.3)
        assert second.is_alive() and not (tmp_path / "Kvasir-SEG").exists()
        kvasir.extract_kvasir_zip(tmp_path / "kvasir-seg.zip", tmp_path / "Kvasir-SEG")
        first = (tmp_path / "Kvasir-SEG").stat().st_ino
    second.join(10)
    assert len(results[0]) == 16 and (tmp_path / "Kvasir-SEG").stat().st_ino == first  # not extracted again
    output = capsys.readouterr().out
    assert f"waiting for another process extracting Kvasir-SEG into {tmp_path} (pid {os.getpid()})" in output
    assert output.count("extracting ") == 2  # the wait, and the test's own extraction


def test_killed_extractions_leave_staging_folders_that_the_next_run_removes(kvasir_dir, tmp_path, kvasir_zip):
    leftover = kvasir_dir / ".Kvasir-SEG.extracting-x1y2z3" / "Kvasir-SEG" / "images"
    leftover.mkdir(parents=True)  # what kill -9 during an extraction leaves
    assert len(prepare_kvasir_seg(kvasir_dir)) == 16
    assert not leftover.parent.parent.exists()
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")  # and when the dataset still has to be extracted
    leftover = tmp_path / ".Kvasir-SEG.extracting-a1b2c3"
    leftover.mkdir()
    assert len(prepare_kvasir_seg(tmp_path)) == 16 and not leftover.exists()


def test_a_read_only_data_folder_with_the_dataset_is_read(kvasir_dir, read_only):
    (kvasir_dir / ".Kvasir-SEG.extracting-x1y2z3").mkdir()  # a leftover it cannot remove: left alone
    read_only(kvasir_dir)
    assert len(prepare_kvasir_seg(kvasir_dir)) == 16


def test_extracting_into_a_read_only_data_folder_fails_in_one_line(tmp_path, kvasir_zip, read_only):
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")
    read_only(tmp_path)
    with pytest.raises(DatasetError) as error:
        prepare_kvasir_seg(tmp_path)
    assert str(error.value) == (
        f"cannot write into {tmp_path} to fetch Kvasir-SEG (Read-only file system); make it writable, or point"
        " DATA_DIR at a writable folder or at one that already holds Kvasir-SEG/."
    )


def test_a_data_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DatasetError, match="^the data folder .*data is a file; give a folder"):
        prepare_kvasir_seg(tmp_path / "data")


def test_a_full_disk_during_extraction_names_the_space_needed_and_leaves_nothing(tmp_path, kvasir_zip, full_disk):
    shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")
    code = (
        "from common.errors import run_main; from dataset.kvasir import prepare_kvasir_seg;"
        f" run_main(lambda: prepare_kvasir_seg({str(tmp_path)!r}))"
    )
    result = full_disk(code, limit=1000)  # smaller than each synthetic image
    needed = format_size(unpacked_size(tmp_path / "kvasir-seg.zip"))  # 44.5 KiB, no longer '0 MiB'
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no space left on device while extracting {tmp_path / 'kvasir-seg.zip'} into {tmp_path} (File too"
        f" large): Kvasir-SEG needs {needed} there; free space and run again."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kvasir.lock", "kvasir-seg.zip"]
