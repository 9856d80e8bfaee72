"""Safe extraction: good archives unpack; escaping, linked, bomb-like and corrupt archives are refused."""

import stat
import zipfile

import pytest

from dataset.archive import ArchiveError, safe_extract_zip


def make_zip(path, entries):
    """entries: (name, bytes) pairs, or ZipInfo objects with bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def test_extracts_all_entries(tmp_path, kvasir_zip):
    safe_extract_zip(kvasir_zip, tmp_path / "out")
    assert len(list((tmp_path / "out" / "Kvasir-SEG" / "images").glob("*.jpg"))) == 16
    assert len(list((tmp_path / "out" / "Kvasir-SEG" / "masks").glob("*.jpg"))) == 16


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../escape.txt", "escapes its folder"),
        ("a/../../escape.txt", "escapes its folder"),
        ("..\\escape.txt", "escapes its folder"),  # a Windows separator
        ("/etc/x", "absolute"),
        ("C:/Windows/x", "absolute"),
    ],
)
def test_escaping_entries_are_refused(tmp_path, name, message):
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"fine"), (name, b"evil")])
    with pytest.raises(ArchiveError, match=message):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_symlink_entries_are_refused(tmp_path):
    link = zipfile.ZipInfo("Kvasir-SEG/images/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", [(link, b"/etc/passwd")])
    with pytest.raises(ArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")


def test_zip_bomb_is_refused_before_writing(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(50 * 2**20))])
    assert archive.stat().st_size < 2**20
    with pytest.raises(ArchiveError, match="zip bomb"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_reported_as_corrupt(tmp_path, kvasir_zip):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(kvasir_zip.read_bytes()[: kvasir_zip.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        safe_extract_zip(truncated, tmp_path / "out")


def test_damaged_member_is_reported_as_corrupt(tmp_path):
    archive = make_zip(tmp_path / "damaged.zip", [("data.bin", bytes(range(256)) * 64)])
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF  # inside the compressed member: the CRC check fails on reading
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract_zip(archive, tmp_path / "out")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("Kvasir-SEG/images", b"a file"), ("Kvasir-SEG/images/a.jpg", b"x")], "'Kvasir-SEG/images' both as a file"),
        ([("Kvasir-SEG/masks/", b""), ("Kvasir-SEG/masks", b"a file")], "'Kvasir-SEG/masks' both as a file and"),
        ([(f"Kvasir-SEG/images/{'a' * 300}.jpg", b"x")], "an entry with a name longer than 255 bytes"),
    ],
    ids=["file-above-a-file", "folder-and-file", "300-characters"],
)
def test_entries_no_file_system_can_hold_are_refused_in_one_line(tmp_path, entries, message):
    archive = make_zip(tmp_path / "odd.zip", entries)
    with pytest.raises(ArchiveError, match=message) as error:
        safe_extract_zip(archive, tmp_path / "out")
    assert "\n" not in str(error.value) and str(error.value).endswith("refused.")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_windows_separators_are_read_as_folders(tmp_path):
    archive = make_zip(tmp_path / "windows.zip", [("Kvasir-SEG\\images\\", b""), ("Kvasir-SEG\\images\\a.jpg", b"x")])
    safe_extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "Kvasir-SEG" / "images" / "a.jpg").read_bytes() == b"x"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Kvasir-SEG"]
